# The flake's `vm` check (needs KVM): a NixOS machine whose nix-daemon is nixnest, driven by
# the real Nix client of that NixOS.
#
#   who                         expected
#   root                        connects, trusted
#   alice (in allowed-users)    connects, not trusted; builds; builds recursively
#   mallory (not allowed)       rejected
#   nixbld1 (a build user)      rejected, although allowed-users names its group: nixnest
#                               serves build users only with allow-build-user-connections
{ module }:

{ lib, ... }:

{
  name = "nixnest";

  nodes.machine = { config, pkgs, ... }:
    let
      nix = config.nix.package;
    in
    {
      imports = [ module ];

      services.nixnest.enable = true;
      services.nixnest.recursiveNix.perBuildSocket.enable = true;

      nix.settings = {
        allowed-users = [ "root" "alice" "@nixbld" ];
        substituters = lib.mkForce [ ];
      };
      users.users.alice.isNormalUser = true;
      users.users.mallory.isNormalUser = true;

      # The test derivations run these store paths; `builtins.storePath` gives them context, so
      # the sandbox makes them available.
      virtualisation.additionalPaths = [ pkgs.busybox nix ];

      environment.etc."nixnest-test/plain.nix".text = ''
        derivation {
          name = "nixnest-plain";
          system = builtins.currentSystem;
          builder = "''${builtins.storePath ${pkgs.busybox}}/bin/sh";
          args = [ "-c" "echo built by nixnest > $out" ];
        }
      '';

      # Adds a file to the store from inside the build through the build's own daemon socket,
      # and records which store path it got.
      environment.etc."nixnest-test/recursive.nix".text = ''
        derivation {
          name = "nixnest-recursive";
          system = builtins.currentSystem;
          requiredSystemFeatures = [ "recursive-nix" ];
          builder = "''${builtins.storePath ${pkgs.busybox}}/bin/sh";
          args = [ "-c" "echo added from inside a build > greeting && ''${builtins.storePath ${nix}}/bin/nix-store --add greeting > $out" ];
        }
      '';
    };

  testScript = { nodes, ... }: ''
    import json

    machine.wait_for_unit("sockets.target")
    machine.succeed("systemctl cat nix-daemon.service | grep -q '^ExecStart=.*/bin/nixnest-daemon --daemon'")
    machine.succeed("systemctl cat nix-daemon.socket | grep -qx 'FileDescriptorName=nix-daemon.socket'")

    info = "${nodes.machine.nix.package}/bin/nix --extra-experimental-features nix-command store info --json"

    def trusted(output):
        return json.loads(output).get("trusted")

    with subtest("root is trusted"):
        assert trusted(machine.succeed(info)) == 1

    with subtest("a user in allowed-users connects untrusted"):
        assert trusted(machine.succeed(f"su - alice -c '{info}'")) == 0

    with subtest("a user not in allowed-users is rejected"):
        machine.fail(f"su - mallory -c '{info}'")

    with subtest("a build user is rejected"):
        machine.fail(f"runuser -u nixbld1 -- env HOME=/tmp {info}")

    with subtest("the daemon is nixnest"):
        machine.succeed("systemctl is-active nix-daemon.service")
        machine.succeed("cat /proc/$(systemctl show -p MainPID --value nix-daemon.service)/cmdline | tr '\\0' ' ' | grep -q nixnest-daemon")

    with subtest("a build"):
        out = machine.succeed("su - alice -c 'nix-build --no-out-link /etc/nixnest-test/plain.nix'").strip()
        assert machine.succeed(f"cat {out}").strip() == "built by nixnest"

    with subtest("a recursive build"):
        out = machine.succeed("su - alice -c 'nix-build --no-out-link /etc/nixnest-test/recursive.nix'").strip()
        inner = machine.succeed(f"cat {out}").strip()
        machine.succeed(f"nix-store --check-validity {inner}")
        assert machine.succeed(f"cat {inner}").strip() == "added from inside a build"
  '';
}
