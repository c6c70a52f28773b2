# NixOS module: run nixnest as the machine's Nix daemon.
#
# What changes, and what deliberately does not:
#
# * Only the process behind nix-daemon.service changes. The units stay the ones NixOS takes
#   from `nix.package` (`systemd.packages`); this module adds a drop-in that resets ExecStart
#   to nixnest and keeps the socket at /nix/var/nix/daemon-socket/socket, handed over under
#   the name `nix-daemon.socket`. Clients need no change (`NIX_REMOTE=daemon` is the default
#   for non-root users on NixOS).
# * `nix.package` is untouched: it is still the real Nix that users run as the client and that
#   `nix.checkConfig` runs (`nix config show` / `nix show-config`) on the generated nix.conf.
#   nixnest reads that same /etc/nix/nix.conf, so every standard setting is set with
#   `nix.settings` as usual.
# * Settings only nixnest knows (`services.nixnest.extraSettings`, and what the seed style of
#   recursive Nix needs) never enter nix.conf: real Nix warns about unknown settings, and
#   NixOS's config check turns that warning into a build failure. They are passed to the
#   daemon alone as `--option NAME VALUE` on its command line (the same flag nix-daemon has).
#   Real Nix never reads a unit's ExecStart, and nix.conf has no `!include` of them: an
#   included file is parsed by every `nix` command that finds it, check or not.
{ config, lib, pkgs, ... }:

let
  cfg = config.services.nixnest;

  # Where Nix's clients look for the daemon (`daemon` store); fixed by the client, so fixed here.
  socketDir = "/nix/var/nix/daemon-socket";
  socketPath = "${socketDir}/socket";

  # Rendered the way nix.conf values are written: booleans as true/false, lists space-separated.
  settingValue = v:
    if builtins.isBool v then (if v then "true" else "false")
    else if builtins.isList v then builtins.concatStringsSep " " (map settingValue v)
    else toString v;

  # One word of a systemd command line. Plain words stay readable; anything else is double-quoted
  # with C escapes, and `%` (specifiers) and `$` (environment expansion) are doubled because
  # systemd expands them even inside quotes.
  execWord = s:
    if builtins.match "[A-Za-z0-9_./:@=+,-]+" s != null then s
    else "\"" + builtins.replaceStrings [ "\\" "\"" "\n" "%" "$" ] [ "\\\\" "\\\"" "\\n" "%%" "$$" ] s + "\"";

  daemonCommand = builtins.concatStringsSep " " (
    [ "${cfg.package}/bin/nixnest-daemon" "--daemon" ]
    ++ builtins.concatMap
      (name: [ "--option" (execWord name) (execWord (settingValue cfg.extraSettings.${name})) ])
      (builtins.attrNames cfg.extraSettings)
  );

  systemFeatures = config.nix.settings.system-features or [ ];
  settingsInBoth = builtins.attrNames (builtins.intersectAttrs cfg.extraSettings config.nix.settings);
in
{
  options.services.nixnest = {
    enable = lib.mkEnableOption "nixnest as the Nix daemon (the client stays `nix.package`)";

    package = lib.mkOption {
      type = lib.types.package;
      default = pkgs.nixnest-daemon or (pkgs.callPackage ./package.nix { });
      defaultText = lib.literalExpression "pkgs.nixnest-daemon or (pkgs.callPackage ./package.nix { })";
      description = "The package providing `bin/nixnest-daemon`.";
    };

    recursiveNix.perBuildSocket.enable = lib.mkEnableOption ''
      recursive Nix the standard way: each build that lists `recursive-nix` in
      `requiredSystemFeatures` gets its own daemon socket inside its sandbox. Adds `recursive-nix`
      to `nix.settings.experimental-features` and to `nix.settings.system-features` (merged with
      NixOS's defaults; if you set `system-features` yourself, include `recursive-nix`)'';

    recursiveNix.seed.enable = lib.mkEnableOption ''
      seed-style recursive Nix: builds reach the machine's daemon socket (its directory is added
      to `extra-sandbox-paths`) and nixnest accepts connections from build users
      (`allow-build-user-connections = true`), serving them as that build'';

    extraSettings = lib.mkOption {
      type = lib.types.attrsOf (lib.types.oneOf [
        lib.types.bool
        lib.types.int
        lib.types.str
        (lib.types.listOf lib.types.str)
      ]);
      default = { };
      example = { allow-build-user-connections = true; };
      description = ''
        Settings only nixnest understands, passed to the daemon as `--option NAME VALUE` and kept
        out of nix.conf (where real Nix would reject them). Standard Nix settings belong in
        `nix.settings`, which both nixnest and the clients read.
      '';
    };
  };

  config = lib.mkIf cfg.enable (lib.mkMerge [
    {
      assertions = [
        {
          assertion = config.nix.enable;
          message = "services.nixnest.enable replaces the Nix daemon, which needs nix.enable = true.";
        }
        {
          assertion = settingsInBoth == [ ];
          message = "services.nixnest.extraSettings is for nixnest-only settings; these are also in nix.settings: "
            + builtins.concatStringsSep ", " settingsInBoth;
        }
      ];

      # A drop-in on the units from nix.package: an empty ExecStart= / ListenStream= first clears
      # the packaged value, otherwise systemd would see two commands and two listeners.
      systemd.services.nix-daemon.serviceConfig = {
        ExecStart = [ "" daemonCommand ];
        # nix-daemon forks a process per connection and its unit uses KillMode=process so that a
        # restart spares those. nixnest serves every connection from one process, so the
        # reasons invert: SIGTERM to the daemon lets it stop in order, and anything it leaves
        # behind in the cgroup (a builder) is then killed instead of keeping a build user.
        KillMode = "mixed";
        # A build killed by the kernel's OOM killer fails that build; systemd's default policy
        # would stop the whole daemon.
        OOMPolicy = "continue";
      };
      systemd.sockets.nix-daemon.socketConfig = {
        ListenStream = [ "" socketPath ];
        # systemd's default name for the fd is the socket unit's name, which is this one; set
        # explicitly because nixnest looks for exactly this name in LISTEN_FDNAMES.
        FileDescriptorName = "nix-daemon.socket";
      };

      # For `nixnest-daemon status` (root only; talks to the daemon's control socket).
      environment.systemPackages = [ cfg.package ];
    }

    (lib.mkIf cfg.recursiveNix.perBuildSocket.enable {
      nix.settings.experimental-features = [ "recursive-nix" ];
      # NixOS sets its default system-features with mkDefault; a definition at the same
      # priority is merged with it instead of replacing kvm, nixos-test, big-parallel, ….
      nix.settings.system-features = lib.mkDefault [ "recursive-nix" ];
      assertions = [{
        assertion = builtins.elem "recursive-nix" systemFeatures;
        message = "services.nixnest.recursiveNix.perBuildSocket needs \"recursive-nix\" in nix.settings.system-features, which you set explicitly without it.";
      }];
    })

    (lib.mkIf cfg.recursiveNix.seed.enable {
      services.nixnest.extraSettings.allow-build-user-connections = true;
      nix.settings.extra-sandbox-paths = [ socketDir ];
    })
  ]);
}
