# NOT nixpkgs' module system. A tiny evaluator with only the semantics nix/module.nix relies on,
# so the module can be evaluated by the host's Nix without nixpkgs:
#
# * modules are paths, functions of { config, lib, pkgs, ... }, or attribute sets; a set with
#   neither `options` nor `config` is shorthand for its config (besides its `imports`);
# * options are declared with mkOption; defining an undeclared option, or declaring one twice,
#   is an error, as in NixOS;
# * mkIf / mkMerge / mkOverride (mkDefault, mkForce) behave as in NixOS: at an option, only the
#   definitions of the highest priority (lowest number) count; an option's default is a
#   definition of priority 1500; attribute sets merge by name, lists concatenate, and other
#   values must agree.
#
# No type checking, no submodules, no `_module.args`; see ./lib.nix.
{ lib }:
{ modules, args ? { } }:

let
  isType = t: v: builtins.isAttrs v && (v._type or null) == t;
  isOption = isType "option";
  showPath = builtins.concatStringsSep ".";

  load = m:
    let
      f = if builtins.isPath m || builtins.isString m then import m else m;
      v = if builtins.isFunction f then f (args // { inherit config lib; }) else f;
      module = if v ? options || v ? config then v
        else { imports = v.imports or [ ]; config = builtins.removeAttrs v [ "imports" ]; };
    in
    [{ options = module.options or { }; config = module.config or { }; }]
    ++ builtins.concatMap load (module.imports or [ ]);

  loaded = builtins.concatMap load modules;

  mergeDecls = path: a: b:
    if isOption a || isOption b then throw "stand-in: the option ${showPath path} is declared twice"
    else a // builtins.mapAttrs (n: v: if a ? ${n} then mergeDecls (path ++ [ n ]) a.${n} v else v) b;

  declarations = builtins.foldl' (mergeDecls [ ]) { } (map (m: m.options) loaded);

  # Above the options, mkIf/mkMerge/mkOverride are pushed down to the children without
  # evaluating any condition (conditions read config, whose attribute names must be known
  # first); the result maps each child name to its list of (still wrapped) definitions.
  pushDown = path: v:
    if isType "if" v then builtins.mapAttrs (_: map (lib.mkIf v.condition)) (pushDown path v.content)
    else if isType "merge" v then builtins.zipAttrsWith (_: builtins.concatLists) (map (pushDown path) v.contents)
    else if isType "override" v then builtins.mapAttrs (_: map (lib.mkOverride v.priority)) (pushDown path v.content)
    else if builtins.isAttrs v then builtins.mapAttrs (_: c: [ c ]) v
    else throw "stand-in: ${showPath path} is a group of options but is defined as a value";

  # At an option, definitions are discharged: false mkIfs dropped, mkMerges flattened,
  # each value tagged with its priority.
  discharge = priority: v:
    if isType "if" v then (if v.condition then discharge priority v.content else [ ])
    else if isType "merge" v then builtins.concatMap (discharge priority) v.contents
    else if isType "override" v then discharge v.priority v.content
    else [{ inherit priority; value = v; }];

  # { absent = true; } when every definition was discharged away, else { value = …; }.
  mergeDefs = path: defs:
    let
      flat = builtins.concatMap (d: discharge d.priority d.value) defs;
      best = builtins.foldl' (m: d: if d.priority < m then d.priority else m) 10000 flat;
      winners = map (d: d.value) (builtins.filter (d: d.priority == best) flat);
      child = n: mergeDefs (path ++ [ n ])
        (builtins.concatMap (w: if w ? ${n} then [{ priority = 100; value = w.${n}; }] else [ ]) winners);
      mergeAttrs =
        let
          names = builtins.attrNames (builtins.zipAttrsWith (_: _: null) winners);
          merged = map (n: { name = n; result = child n; }) names;
        in
        builtins.listToAttrs (map (c: { inherit (c) name; value = c.result.value; })
          (builtins.filter (c: !(c.result ? absent)) merged));
    in
    if flat == [ ] then { absent = true; }
    else if builtins.all builtins.isAttrs winners then { value = mergeAttrs; }
    else if builtins.all builtins.isList winners then { value = builtins.concatLists winners; }
    else if builtins.all (w: w == builtins.head winners) winners then { value = builtins.head winners; }
    else throw "stand-in: the option ${showPath path} has conflicting definition values";

  evalAt = path: decl: defs:
    if isOption decl then
      let
        result = mergeDefs path (map (value: { priority = 100; inherit value; }) defs
          ++ (if decl ? default then [{ priority = 1500; value = decl.default; }] else [ ]));
      in
      if result ? absent then throw "stand-in: the option ${showPath path} is used but not defined"
      else result.value
    else
      let
        children = builtins.zipAttrsWith (_: builtins.concatLists) (map (pushDown path) defs);
        undeclared = builtins.filter (n: !(decl ? ${n})) (builtins.attrNames children);
      in
      if undeclared != [ ]
      then throw "stand-in: the option ${showPath (path ++ [ (builtins.head undeclared) ])} does not exist"
      else builtins.mapAttrs (n: d: evalAt (path ++ [ n ]) d (children.${n} or [ ])) decl;

  config = evalAt [ ] declarations (map (m: m.config) loaded);
in
{ inherit config; }
