# The nixnest-daemon binary, built with nixpkgs' Rust tooling from this checkout.
# Used by the flake's overlay and as the NixOS module's default package.
{ lib, rustPlatform }:

let
  root = ../.;
  workspace = builtins.fromTOML (builtins.readFile ../Cargo.toml);

  # Nix and packaging files are left out so that editing them does not rebuild the daemon.
  notForCargo = [ "nix" "packaging" "flake.nix" "flake.lock" "target" "result" ".ci" ".git" ];
  relative = path: lib.removePrefix (toString root + "/") (toString path);
in
rustPlatform.buildRustPackage {
  pname = "nixnest-daemon";
  inherit (workspace.workspace.package) version;

  src = lib.cleanSourceWith {
    name = "nixnest-source";
    src = root;
    filter = path: _type: !(builtins.elem (relative path) notForCargo);
  };

  cargoLock.lockFile = ../Cargo.lock;
  cargoBuildFlags = [ "-p" "nixnest-daemon" ];

  # The test suite needs root, build users and the real Nix clients; it runs in CI (tests/run),
  # not inside a Nix build.
  doCheck = false;

  meta = {
    description = "A nix-daemon replacement that speaks the Nix worker protocol";
    license = [ lib.licenses.mit lib.licenses.asl20 ];
    platforms = lib.platforms.linux;
    mainProgram = "nixnest-daemon";
  };
}
