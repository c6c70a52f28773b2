# NOT NixOS. Declares only the NixOS options nix/module.nix reads or sets, with the defaults
# NixOS gives them where they matter here (its default nix.settings, `system-features` set with
# mkDefault), and renders nix.conf the way NixOS writes it: `key = value`, booleans as
# true/false, lists space-separated, `extra-*` keys after the others.
{ config, lib, pkgs, ... }:

let
  option = default: lib.mkOption { inherit default; };

  valueString = v:
    if v == null then ""
    else if builtins.isBool v then (if v then "true" else "false")
    else if builtins.isList v then builtins.concatStringsSep " " (map valueString v)
    else toString v;

  settings = config.nix.settings;
  isExtra = name: builtins.substring 0 6 name == "extra-";
  lines = names: map (name: "${name} = ${valueString settings.${name}}\n") names;
  names = builtins.attrNames settings;
  nixConf = builtins.concatStringsSep "" (
    [ "# nix.conf rendered by nixnest's stand-in for NixOS (nix/tests/stand-in), not by NixOS\n" ]
    ++ lines (builtins.filter (n: !(isExtra n)) names)
    ++ lines (builtins.filter isExtra names)
  );
in
{
  options = {
    nix.enable = option true;
    nix.package = option pkgs.nix;
    nix.settings = option { };
    systemd.services = option { };
    systemd.sockets = option { };
    environment.etc = option { };
    environment.systemPackages = option [ ];
    assertions = option [ ];
  };

  config = {
    nix.settings = {
      allowed-users = lib.mkOptionDefault [ "*" ];
      auto-optimise-store = lib.mkOptionDefault false;
      cores = lib.mkOptionDefault 0;
      extra-sandbox-paths = lib.mkOptionDefault [ ];
      max-jobs = lib.mkOptionDefault "auto";
      require-sigs = lib.mkOptionDefault true;
      sandbox = lib.mkOptionDefault true;
      substituters = [ "https://cache.nixos.org/" ];
      system-features = lib.mkDefault [ "nixos-test" "benchmark" "big-parallel" "kvm" ];
      trusted-users = [ "root" ];
    };
    environment.etc."nix/nix.conf".text = nixConf;
  };
}
