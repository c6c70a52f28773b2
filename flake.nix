{
  description = "nixnest: a nix-daemon replacement in Rust";

  # No flake.lock is committed yet (it was written on a machine without network access);
  # the first `nix flake check` / `nix build` writes one.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system:
        f (import nixpkgs { inherit system; overlays = [ self.overlays.default ]; }));
    in
    {
      # The daemon binary (rustPlatform.buildRustPackage over this workspace's Cargo.lock,
      # `-p nixnest-daemon`, tests off): see nix/package.nix.
      overlays.default = final: _prev: {
        nixnest-daemon = final.callPackage ./nix/package.nix { };
      };

      packages = forAllSystems (pkgs: {
        nixnest-daemon = pkgs.nixnest-daemon;
        default = pkgs.nixnest-daemon;
      });

      # `services.nixnest.*`; see nix/module.nix. Works without the overlay: the module falls
      # back to building nix/package.nix with the system's own nixpkgs.
      nixosModules.default = ./nix/module.nix;
      nixosModules.nixnest = self.nixosModules.default;

      checks = forAllSystems (pkgs: {
        package = pkgs.nixnest-daemon;

        # The module evaluated inside a real NixOS configuration; building it also runs
        # nix.checkConfig (the real `nix config show`) on the generated nix.conf.
        module-eval = import ./nix/tests/module-eval.nix {
          inherit pkgs;
          inherit (nixpkgs.lib) nixosSystem;
          module = self.nixosModules.default;
        };

        # Needs KVM: the authorization matrix, a build and a recursive build in a NixOS VM.
        vm = pkgs.testers.runNixOSTest (import ./nix/tests/vm.nix {
          module = self.nixosModules.default;
        });
      });
    };
}
