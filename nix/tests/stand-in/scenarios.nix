# What tests/tests/packaging.rs evaluates, one attribute at a time:
#
#   nix-instantiate --eval --strict --json nix/tests/stand-in/scenarios.nix -A enabled.execStart
#
# Each scenario is nix/module.nix plus a user's configuration, evaluated with nixnest's
# stand-in for nixpkgs' lib and for NixOS (this directory), NOT with nixpkgs. The flake's
# `module-eval` check does the same against real nixpkgs.
let
  lib = import ./lib.nix;
  pkgs = import ./pkgs.nix;
  evalModules = import ./eval-modules.nix { inherit lib; };

  # A drop-in as NixOS writes one for a unit that comes from a package: one `Key=value` line per
  # value, a list giving one line per element (so [ "" x ] first resets the key).
  dropIn = name: section: settings:
    let
      value = v: if builtins.isBool v then (if v then "true" else "false") else toString v;
      lines = key: map (v: "${key}=${value v}\n")
        (if builtins.isList settings.${key} then settings.${key} else [ settings.${key} ]);
    in
    builtins.toFile name ("[${section}]\n"
      + builtins.concatStringsSep "" (builtins.concatMap lines (builtins.attrNames settings)));

  scenario = userConfig:
    let
      inherit (evalModules {
        modules = [ ./nixos.nix ../../module.nix userConfig ];
        args = { inherit pkgs; };
      }) config;
      service = config.systemd.services.nix-daemon or { };
      socket = config.systemd.sockets.nix-daemon or { };
    in
    {
      execStart = service.serviceConfig.ExecStart or null;
      killMode = service.serviceConfig.KillMode or null;
      listenStream = socket.socketConfig.ListenStream or null;
      fileDescriptorName = socket.socketConfig.FileDescriptorName or null;
      nixPackage = config.nix.package;
      nixSettings = config.nix.settings;
      # These need --read-write-mode: they write files to the (throwaway) store.
      nixConfFile = builtins.toFile "nix.conf" config.environment.etc."nix/nix.conf".text;
      serviceDropIn = dropIn "nix-daemon.service" "Service" (service.serviceConfig or { });
      socketDropIn = dropIn "nix-daemon.socket" "Socket" (socket.socketConfig or { });
      systemPackages = config.environment.systemPackages;
      failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) config.assertions);
    };

  enable = { services.nixnest.enable = true; };
in
{
  note = "evaluated with nixnest's stand-in for nixpkgs lib and NixOS (nix/tests/stand-in), not nixpkgs";
  inherit pkgs;

  disabled = scenario { };
  enabled = scenario enable;

  perBuildSocket = scenario {
    imports = [ enable ];
    services.nixnest.recursiveNix.perBuildSocket.enable = true;
    nix.settings.experimental-features = [ "nix-command" ];
  };

  seed = scenario {
    imports = [ enable ];
    services.nixnest.recursiveNix.seed.enable = true;
  };

  everything = scenario {
    imports = [ enable ];
    services.nixnest = {
      package = "/nix/store/22222222222222222222222222222222-nixnest-daemon-custom";
      recursiveNix.perBuildSocket.enable = true;
      recursiveNix.seed.enable = true;
      # Not a real setting: exercises quoting of a value systemd would otherwise split or expand.
      extraSettings.nixnest-quoting-probe = "two words, \"quotes\", 100% and $HOME";
    };
  };

  # The user sets system-features without recursive-nix: the module must say so.
  ownSystemFeatures = scenario {
    imports = [ enable ];
    services.nixnest.recursiveNix.perBuildSocket.enable = true;
    nix.settings.system-features = [ "kvm" ];
  };

  # A standard setting given as a nixnest-only one.
  settingInBoth = scenario {
    imports = [ enable ];
    services.nixnest.extraSettings.sandbox = false;
  };

  nixDisabled = scenario {
    imports = [ enable ];
    nix.enable = false;
  };

  # Seed style needs allow-build-user-connections = true; saying false as well is a conflict.
  seedConflict = scenario {
    imports = [ enable ];
    services.nixnest.recursiveNix.seed.enable = true;
    services.nixnest.extraSettings.allow-build-user-connections = false;
  };
}
