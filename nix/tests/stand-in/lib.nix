# NOT nixpkgs. The smallest stand-in for the parts of nixpkgs' `lib` that nix/module.nix calls,
# so that tests/tests/packaging.rs can evaluate the module with the host's Nix, without
# nixpkgs. Same names and meaning as nixpkgs for what the module uses; nothing else.
#
# Module-system markers are plain tagged attribute sets that ./eval-modules.nix interprets.
# Option types are descriptive values only: the stand-in does not type-check definitions
# (the flake's `module-eval` check, against real nixpkgs, does).
rec {
  mkIf = condition: content: { _type = "if"; inherit condition content; };
  mkMerge = contents: { _type = "merge"; inherit contents; };
  mkOverride = priority: content: { _type = "override"; inherit priority content; };

  # The priorities nixpkgs uses: a plain definition is 100, an option's default 1500.
  mkDefault = mkOverride 1000;
  mkForce = mkOverride 50;
  mkOptionDefault = mkOverride 1500;

  mkOption = attrs: attrs // { _type = "option"; };
  mkEnableOption = name: mkOption {
    type = types.bool;
    default = false;
    example = true;
    description = "Whether to enable ${name}.";
  };

  literalExpression = text: { _type = "literalExpression"; inherit text; };

  types = {
    bool = { name = "bool"; };
    int = { name = "int"; };
    str = { name = "str"; };
    package = { name = "package"; };
    listOf = elemType: { name = "listOf"; inherit elemType; };
    attrsOf = elemType: { name = "attrsOf"; inherit elemType; };
    oneOf = alternatives: { name = "oneOf"; inherit alternatives; };
  };
}
