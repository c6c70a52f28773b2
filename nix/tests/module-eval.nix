# The flake's `module-eval` check: nix/module.nix inside a real NixOS configuration (real
# nixpkgs, unlike the stand-in that tests/tests/packaging.rs evaluates with the host's Nix).
#
# Building it checks the unit drop-ins NixOS generates, and builds the generated nix.conf,
# whose build runs NixOS's nix.checkConfig: the real `nix config show` with warnings treated
# as errors. That is the check nixnest-only settings must never reach.
{ pkgs, nixosSystem, module }:

let
  system = nixosSystem {
    modules = [
      module
      ({ lib, ... }: {
        nixpkgs.hostPlatform = pkgs.stdenv.hostPlatform.system;
        boot.loader.grub.enable = false;
        fileSystems."/" = { device = "none"; fsType = "tmpfs"; };
        system.stateVersion = lib.trivial.release;

        services.nixnest = {
          enable = true;
          package = pkgs.nixnest-daemon;
          recursiveNix.perBuildSocket.enable = true;
          recursiveNix.seed.enable = true;
        };
      })
    ];
  };
  inherit (system) config options;

  # The client and nix.checkConfig keep using the Nix that NixOS chose; this module must not
  # be among the files that define nix.package.
  nixPackageUntouched =
    !(builtins.elem (toString module) (map toString options.nix.package.files));

  serviceUnit = pkgs.writeText "nix-daemon.service" config.systemd.units."nix-daemon.service".text;
  socketUnit = pkgs.writeText "nix-daemon.socket" config.systemd.units."nix-daemon.socket".text;
  nixConf = config.environment.etc."nix/nix.conf".source;
  daemon = "${pkgs.nixnest-daemon}/bin/nixnest-daemon";
in
assert nixPackageUntouched;
pkgs.runCommand "nixnest-module-eval" { } ''
  set -eu
  fail() { echo "module-eval: $*" >&2; exit 1; }

  # The drop-in clears the packaged ExecStart= / ListenStream= before setting its own.
  grep -qx 'ExecStart=' ${serviceUnit} || fail "service drop-in does not reset ExecStart"
  grep -qx 'ExecStart=${daemon} --daemon --option allow-build-user-connections true' ${serviceUnit} \
    || fail "ExecStart is not nixnest with --daemon and the seed setting"
  grep -qx 'KillMode=mixed' ${serviceUnit} || fail "KillMode is not mixed"

  grep -qx 'ListenStream=' ${socketUnit} || fail "socket drop-in does not reset ListenStream"
  grep -qx 'ListenStream=/nix/var/nix/daemon-socket/socket' ${socketUnit} || fail "socket path moved"
  grep -qx 'FileDescriptorName=nix-daemon.socket' ${socketUnit} || fail "socket fd name missing"

  # nix.conf passed nix.checkConfig to exist at all; check what it says.
  grep -q '^experimental-features = .*recursive-nix' ${nixConf} || fail "experimental-features lacks recursive-nix"
  grep -q '^system-features = .*kvm.*recursive-nix\|^system-features = .*recursive-nix.*kvm' ${nixConf} \
    || fail "system-features lost NixOS's defaults or lacks recursive-nix"
  grep -q '^extra-sandbox-paths = .*/nix/var/nix/daemon-socket' ${nixConf} || fail "seed socket dir not in the sandbox"
  if grep -q 'allow-build-user-connections' ${nixConf}; then fail "a nixnest-only setting reached nix.conf"; fi

  touch $out
''
