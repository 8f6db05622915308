"""A pushed hubclf model that loads without hubclf: ``modeling_hubclf.py``, generated from ``hubclf/models/``, and
the ``auto_map`` entry of config.json that points 🤗 transformers at it.

    from transformers import pipeline   # torch, timm and transformers installed; hubclf not
    classifier = pipeline("image-classification", model="me/flowers-alexnet", trust_remote_code=True)

How transformers (5.x) reads a hubclf repo: config.json has no ``model_type`` but has ``pretrained_cfg``, so it is a
timm config (``TimmWrapperConfig``) and its image processor is ``TimmWrapperImageProcessor``, which builds timm's own
eval transform from ``pretrained_cfg`` (input size, mean/std, interpolation, crop_pct). Only the model class depends
on ``trust_remote_code``: without it, transformers keeps its own ``TimmWrapperForImageClassification``
(``timm.create_model``, which knows the hubclf architectures once hubclf registered them); with it, the ``auto_map``
class, a subclass of TimmWrapper's that builds the model from this file instead. So ``auto_map`` changes neither the
config class nor the preprocessing, and the path without ``trust_remote_code`` is the one it always was.

The file is assembled from the source of ``hubclf/models/``: the architectures' timm entrypoints (the functions
decorated with ``@register_model``) and every definition they reach, copied as written, with hubclf's own imports
inlined. It never touches timm's model registry (``register_model`` becomes a local collector), so loading it next
to an installed hubclf changes nothing there. Only hubclf architectures (``hubclf_*``) get it: timm's own backbones
already load everywhere.

    files = remote_code_files(config)       # {"modeling_hubclf.py": "..."} for a hubclf architecture, else {}
    config.update(auto_map_entries(config["architecture"]))
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubclf._version import __version__

__all__ = [
    "MODELING_FILE",
    "REMOTE_CODE_FILES",
    "auto_map_entries",
    "remote_code_files",
    "generate_modeling_file",
    "GenerationError",
]

MODELING_FILE = "modeling_hubclf.py"
REMOTE_CODE_FILES = (MODELING_FILE,)  # every file name remote_code_files() can return
MODELING_MODULE = MODELING_FILE.removesuffix(".py")
# transformers' auto class -> the class of the modeling file it loads with trust_remote_code=True.
AUTO_CLASSES = {"AutoModel": "TimmWrapperModel", "AutoModelForImageClassification": "TimmWrapperForImageClassification"}
MODELS_DIR = Path(__file__).resolve().parent / "models"
PACKAGE = "hubclf.models"
# The only packages the generated file may import (plus the standard library): what transformers' remote code needs.
THIRD_PARTY = ("torch", "timm", "transformers")
# timm's decorator, renamed in the generated file to a local one that records the entrypoint by name.
TIMM_REGISTER = ("timm.models", "register_model")
LOCAL_REGISTER = "register_architecture"

_PREAMBLE = """
# The architectures by name. `import hubclf` registers them in timm's model registry; this file only collects them,
# so loading it never replaces what an installed hubclf registered.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {}


def register_architecture(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    ARCHITECTURES[fn.__name__] = fn
    return fn
"""

_TRANSFORMERS_GLUE = '''
def create_timm_model(config: transformers.TimmWrapperConfig, **kwargs: Any) -> nn.Module:
    """What `timm.create_model(config.architecture, pretrained=False, **kwargs, **config.model_args)` builds in
    TimmWrapper once hubclf has registered its architectures; config.json's pretrained_cfg becomes the model's, as
    timm's `hf-hub:` loader does. The weights come from model.safetensors, loaded by transformers."""
    if config.architecture not in ARCHITECTURES:
        raise ValueError(f"{config.architecture!r} is not one of this file's architectures {sorted(ARCHITECTURES)}")
    build = ARCHITECTURES[config.architecture]
    pretrained_cfg = getattr(config, "pretrained_cfg", None)
    return build(pretrained=False, pretrained_cfg=pretrained_cfg, **kwargs, **(config.model_args or {}))


# Both classes keep the names of the transformers classes they extend: the image-classification pipeline checks a
# model by its class name and logs an error ("not supported") for any other name.
class TimmWrapperForImageClassification(transformers.TimmWrapperForImageClassification):
    """transformers' TimmWrapperForImageClassification (same forward, outputs and weight names) around this file's
    model, where transformers' own asks timm's registry for it."""

    def __init__(self, config: transformers.TimmWrapperConfig) -> None:
        transformers.TimmWrapperPreTrainedModel.__init__(self, config)
        if config.num_labels == 0:
            raise ValueError("this checkpoint has no classifier: load it with AutoModel, or pass num_labels=N")
        self.timm_model = create_timm_model(config, num_classes=config.num_labels)
        self.num_labels = config.num_labels
        self.post_init()


class TimmWrapperModel(transformers.TimmWrapperModel):
    """transformers' TimmWrapperModel (features and pooled features, no classifier) around this file's model."""

    def __init__(self, config: transformers.TimmWrapperConfig) -> None:
        transformers.TimmWrapperPreTrainedModel.__init__(self, config)
        self.features_only = (config.model_args or {}).get("features_only", False)
        self.timm_model = create_timm_model(config, num_classes=0)
        self.post_init()
'''
# What the preamble and the glue use, whether or not the copied definitions import it too.
_GLUE_IMPORTS = ("from collections.abc import Callable", "from typing import Any", "import torch.nn as nn",
                 "import transformers")  # fmt: skip


class GenerationError(RuntimeError):
    """``hubclf/models`` holds something the generator cannot copy into a self-contained file; the message says
    what and where (a hubclf bug, caught by tests/test_remote_code.py)."""


# ---- what hub.py calls ----------------------------------------------------------------------------------------------
def is_hubclf_architecture(architecture: str) -> bool:
    """Registered by hubclf rather than shipped with timm: only these need the remote code.

    is_hubclf_architecture("hubclf_alexnet_slim")   # True; "resnet18" -> False
    """
    return isinstance(architecture, str) and architecture.startswith("hubclf_")


def auto_map_entries(architecture: str) -> dict[str, Any]:
    """The config.json entries that make ``trust_remote_code=True`` load ``architecture`` from ``modeling_hubclf.py``:
    ``{"auto_map": {...}}`` for a hubclf architecture, ``{}`` for any other timm architecture.

    No ``model_type``: transformers recognises the timm config by its ``pretrained_cfg`` and keeps TimmWrapper's
    config class and image processor, so loading without ``trust_remote_code`` stays exactly as before.

        config.update(auto_map_entries("hubclf_alexnet_slim"))
        # config["auto_map"]["AutoModelForImageClassification"] == "modeling_hubclf.TimmWrapperForImageClassification"
    """
    if not is_hubclf_architecture(architecture):
        return {}
    return {"auto_map": {auto: f"{MODELING_MODULE}.{cls}" for auto, cls in AUTO_CLASSES.items()}}


def remote_code_files(config: dict[str, Any]) -> dict[str, str]:
    """The remote-code files a model folder with this ``config.json`` carries, by file name: ``modeling_hubclf.py``
    for a hubclf architecture, none for other timm architectures. Generated afresh from this hubclf's
    ``hubclf/models``, never copied from a folder.

        for name, text in remote_code_files(config).items():
            (folder / name).write_text(text, encoding="utf-8")
    """
    if not is_hubclf_architecture(config.get("architecture", "")):
        return {}
    return {MODELING_FILE: generate_modeling_file()}


# ---- the generator --------------------------------------------------------------------------------------------------
@dataclass
class _Module:
    """One source file of hubclf/models, parsed."""

    name: str  # hubclf.models._base
    path: Path
    lines: list[str]
    definitions: dict[str, ast.stmt] = field(default_factory=dict)  # top-level name -> its def/class/assignment
    hubclf_names: dict[str, tuple[str, str]] = field(default_factory=dict)  # local name -> (module, name)
    imports: dict[str, tuple[str, str, str | None]] = field(default_factory=dict)  # name -> (from, name, as)

    @property
    def shown_path(self) -> str:
        return f"hubclf/models/{self.path.name}"


def generate_modeling_file(models_dir: str | Path = MODELS_DIR) -> str:
    """The text of ``modeling_hubclf.py``: hubclf's architectures from ``models_dir`` in one file that imports only
    torch, timm, transformers and the standard library. Deterministic: the same sources give the same bytes.

        text = generate_modeling_file()
        compile(text, "modeling_hubclf.py", "exec")
    """
    modules = _parse_package(Path(models_dir))
    roots = [
        (module.name, name)
        for module in modules.values()
        for name, node in module.definitions.items()
        if _is_registered(module, node)
    ]
    if not roots:
        raise GenerationError(f"no @register_model entrypoint in {models_dir}: nothing to generate")
    included, imports = _closure(modules, roots)
    renames = _final_names(modules, included)
    order = _module_order(modules)

    sections = []
    used_modules = []
    for module_name in order:
        module = modules[module_name]
        # One statement can define two names (`a = b = ...`): each statement once, in source order.
        nodes = list(dict.fromkeys(n for name, n in module.definitions.items() if (module_name, name) in included))
        if not nodes:
            continue
        used_modules.append(module)
        section = _banner(module.shown_path)
        for previous, node in zip([None, *nodes[:-1]], nodes, strict=True):
            # Constants on consecutive lines stay together, as in the source; definitions get two blank lines.
            together = previous is None or (
                _is_assignment(previous) and _is_assignment(node) and node.lineno == previous.end_lineno + 1
            )
            section += ("\n" if together else "\n\n\n") + _copy_definition(module, node, renames[module_name])
        sections.append(section)
    header = _header(used_modules)
    import_block = _import_block(imports)
    body = "\n\n\n".join(sections)
    glue = _banner("transformers: the classes config.json's auto_map names") + "\n" + _TRANSFORMERS_GLUE.strip()
    text = f"{header}\n{import_block}\n\n{_PREAMBLE.strip()}\n\n\n{body}\n\n\n{glue}\n"
    _check_generated(text)
    return text


def _banner(title: str) -> str:
    return f"# ---- {title} " + "-" * (112 - len(title))


def _is_assignment(node: ast.stmt | None) -> bool:
    return isinstance(node, (ast.Assign, ast.AnnAssign))


def _header(modules: list[_Module]) -> str:
    sources = ", ".join(module.path.name for module in modules)
    return (
        f"# {MODELING_FILE}: generated by hubclf {__version__} from hubclf/models/ ({sources}).\n"
        "# Do not edit: hubclf writes it anew on every save and push.\n"
        "#\n"
        "# It exists so that this model loads without hubclf installed, through transformers' remote code:\n"
        '#     pipeline("image-classification", model=<this repo>, trust_remote_code=True)\n'
        "# It holds only the model: hubclf's architecture code, copied as written with hubclf's own imports inlined,\n"
        "# and two transformers classes around it. It imports torch, timm and transformers, reads no file, opens no\n"
        "# connection, and adds nothing to timm's model registry.\n"
    )


def _parse_package(models_dir: Path) -> dict[str, _Module]:
    modules = {}
    for path in sorted(models_dir.glob("*.py")):
        if path.name == "__init__.py":
            continue
        name = f"{PACKAGE}.{path.stem}"
        source = path.read_text(encoding="utf-8")
        module = _Module(name, path, source.splitlines())
        tree = ast.parse(source, filename=str(path))
        for index, node in enumerate(tree.body):
            _read_statement(module, node, is_first=index == 0)
        modules[name] = module
    return modules


def _read_statement(module: _Module, node: ast.stmt, *, is_first: bool) -> None:
    where = f"{module.shown_path}:{node.lineno}"
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and is_first:
        return  # the module docstring
    if isinstance(node, ast.ImportFrom):
        source = "." * node.level + (node.module or "")
        if source == "__future__":
            return  # the generated file evaluates annotations eagerly, as _base.py needs for TorchScript
        if node.level or source == "hubclf" or source.startswith("hubclf."):
            target = PACKAGE + source if node.level == 1 else source
            if not target.startswith(PACKAGE + "."):
                raise GenerationError(f"{where}: imports from {source}, outside {PACKAGE}: it cannot be inlined")
            for alias in node.names:
                module.hubclf_names[alias.asname or alias.name] = (target, alias.name)
            return
        for alias in node.names:
            module.imports[alias.asname or alias.name] = (source, alias.name, alias.asname)
        return
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == "hubclf" or alias.name.startswith("hubclf."):
                raise GenerationError(f"{where}: `import {alias.name}` cannot be inlined; use `from ... import`")
            module.imports[alias.asname or alias.name] = ("", alias.name, alias.asname)
        return
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        module.definitions[node.name] = node
        return
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
    if targets and all(isinstance(t, ast.Name) for t in targets):
        for target in targets:
            module.definitions[target.id] = node
        return
    raise GenerationError(f"{where}: a top-level {type(node).__name__} statement, which the generator does not copy")


def _is_registered(module: _Module, node: ast.stmt) -> bool:
    """A function decorated with timm's ``@register_model``: an architecture entrypoint."""
    if not isinstance(node, ast.FunctionDef):
        return False
    for decorator in node.decorator_list:
        if isinstance(decorator, ast.Name) and _import_of(module, decorator.id) == TIMM_REGISTER:
            return True
    return False


def _import_of(module: _Module, name: str) -> tuple[str, str] | None:
    """``(module, name)`` of a ``from module import name`` binding ``name``, else None."""
    spec = module.imports.get(name)
    return (spec[0], spec[1]) if spec and spec[0] else None


def _closure(
    modules: dict[str, _Module], roots: list[tuple[str, str]]
) -> tuple[set[tuple[str, str]], set[tuple[str, str, str | None]]]:
    """Every top-level definition the roots reach, and the external imports those definitions use."""
    included: set[tuple[str, str]] = set()
    imports: set[tuple[str, str, str | None]] = set()
    pending = list(roots)
    while pending:
        module_name, name = pending.pop()
        if (module_name, name) in included:
            continue
        included.add((module_name, name))
        module = modules[module_name]
        for used in _names_in(module.definitions[name]):
            if used in module.definitions:
                pending.append((module_name, used))
            elif used in module.hubclf_names:
                pending.append(_resolve(modules, *module.hubclf_names[used]))
            else:
                # `import torch.fx` binds `torch`, as `import torch` does: both are kept where `torch` is used.
                imports.update(
                    spec for spec in module.imports.values() if _bound_name(spec) == used and spec[:2] != TIMM_REGISTER
                )
    return included, imports


def _bound_name(spec: tuple[str, str, str | None]) -> str:
    """The name an import statement binds: ``nn`` for ``import torch.nn as nn``, ``torch`` for ``import torch.fx``."""
    source, name, asname = spec
    return asname or (name if source else name.split(".")[0])


def _names_in(node: ast.stmt) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _resolve(modules: dict[str, _Module], module_name: str, name: str) -> tuple[str, str]:
    """Follow ``from hubclf.models.x import name`` to the module that defines ``name``."""
    seen = set()
    while (module_name, name) not in seen:
        seen.add((module_name, name))
        module = modules.get(module_name)
        if module is None:
            raise GenerationError(f"{module_name} is not a module of {PACKAGE} (needed for {name})")
        if name in module.definitions:
            return module_name, name
        if name not in module.hubclf_names:
            raise GenerationError(f"{module.shown_path} does not define {name}")
        module_name, name = module.hubclf_names[name]
    raise GenerationError(f"circular import of {name} in {PACKAGE}")


def _final_names(modules: dict[str, _Module], included: set[tuple[str, str]]) -> dict[str, dict[str, str]]:
    """Per module, each name as it is spelt in the generated file. A name two modules define (alexnet.py and vgg.py
    both have ``checkpoint_filter_fn``) gets its module as a suffix: ``checkpoint_filter_fn_alexnet``."""
    owners: dict[str, list[str]] = {}
    for module_name, name in sorted(included):
        owners.setdefault(name, []).append(module_name)
    reserved = {"ARCHITECTURES", LOCAL_REGISTER, "create_timm_model", *AUTO_CLASSES.values()}

    def final(module_name: str, name: str) -> str:
        if name in reserved:
            raise GenerationError(f"{modules[module_name].shown_path} defines {name}, a name the generated file uses")
        if len(owners[name]) == 1:
            return name
        suffix = module_name.rsplit(".", 1)[1].strip("_")
        return f"{name}_{suffix.upper() if name.isupper() else suffix}"

    renames: dict[str, dict[str, str]] = {}
    for module_name, module in modules.items():
        mapping = {name: final(module_name, name) for name in module.definitions if (module_name, name) in included}
        for local, (target, name) in module.hubclf_names.items():
            resolved = _resolve(modules, target, name)
            if resolved in included:
                mapping[local] = final(*resolved)
        for local in module.imports:
            if _import_of(module, local) == TIMM_REGISTER:
                mapping[local] = LOCAL_REGISTER
        renames[module_name] = mapping
    return renames


def _module_order(modules: dict[str, _Module]) -> list[str]:
    """Modules after the modules they import from (alphabetical otherwise), so every name is defined before use."""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in path:
            raise GenerationError(f"circular imports in {PACKAGE}: {' -> '.join((*path, name))}")
        for target, _ in sorted(set(modules[name].hubclf_names.values())):
            visit(target, (*path, name))
        order.append(name)

    for name in sorted(modules):
        visit(name, ())
    return order


def _copy_definition(module: _Module, node: ast.stmt, renames: dict[str, str]) -> str:
    """The definition's source lines (with its decorators and the comment lines right above it), names renamed."""
    start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))]) - 1
    while start > 0 and module.lines[start - 1].lstrip().startswith("#"):
        start -= 1
    lines = [line.encode("utf-8") for line in module.lines[start : node.end_lineno]]
    changes = {name: new for name, new in renames.items() if name != new}
    args = {a.arg for a in ast.walk(node) if isinstance(a, ast.arg)}
    if args & set(changes):
        raise GenerationError(f"{module.shown_path}:{node.lineno}: a parameter shadows {sorted(args & set(changes))}")
    # ast columns count UTF-8 bytes, so the lines are edited as bytes, right to left within each line.
    edits = [(n.lineno, n.col_offset, n.end_col_offset, changes[n.id]) for n in ast.walk(node)
             if isinstance(n, ast.Name) and n.id in changes]  # fmt: skip
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name in changes:
        line = module.lines[node.lineno - 1].encode("utf-8")
        column = line.index(f" {node.name}".encode()) + 1
        edits.append((node.lineno, column, column + len(node.name.encode()), changes[node.name]))
    for lineno, begin, end, new in sorted(edits, key=lambda e: (e[0], -e[1])):
        i = lineno - 1 - start
        lines[i] = lines[i][:begin] + new.encode("utf-8") + lines[i][end:]
    return "\n".join(line.decode("utf-8") for line in lines)


def _import_block(imports: Iterable[tuple[str, str | None, str | None]]) -> str:
    """isort-style: the standard library, then third-party; ``import x`` before ``from x import y``."""
    plain: set[str] = set()
    from_imports: dict[str, set[str]] = {}
    for source, name, asname in {*imports, *(_parse_import(line) for line in _GLUE_IMPORTS)}:
        top = (source or name or "").split(".")[0]
        if top not in THIRD_PARTY and top not in sys.stdlib_module_names:
            raise GenerationError(f"the generated file would import {source or name}: only {THIRD_PARTY} are allowed")
        if source:
            from_imports.setdefault(source, set()).add(name if asname is None else f"{name} as {asname}")
        else:
            plain.add(f"import {name}" + (f" as {asname}" if asname else ""))
    groups = {True: [], False: []}
    for statement in plain:
        groups[statement.split()[1].split(".")[0] in sys.stdlib_module_names].append((statement.split()[1], statement))
    for source, names in from_imports.items():
        statement = f"from {source} import {', '.join(sorted(names))}"
        if len(statement) > 120:
            statement = f"from {source} import (\n" + "".join(f"    {n},\n" for n in sorted(names)) + ")"
        groups[source.split(".")[0] in sys.stdlib_module_names].append((source, statement))
    return "\n\n".join(
        "\n".join(s for _, s in sorted(group, key=lambda item: (item[1].startswith("from"), item[0])))
        for group in (groups[True], groups[False])
        if group
    )


def _parse_import(line: str) -> tuple[str, str | None, str | None]:
    node = ast.parse(line).body[0]
    alias = node.names[0]
    return (node.module if isinstance(node, ast.ImportFrom) else "", alias.name, alias.asname)


# Names that would let the file do more than build a model: read or write files, run code or processes, download.
FORBIDDEN_NAMES = {
    "open", "eval", "exec", "compile", "__import__", "globals", "input", "breakpoint", "importlib", "os", "sys",
    "subprocess", "socket", "urllib", "requests", "httpx", "pickle", "shutil", "pathlib", "Path", "hf_hub_download",
    "load_state_dict_from_url", "load_pretrained",
}  # fmt: skip
FORBIDDEN_ATTRIBUTES = {
    "load", "hub", "system", "popen", "urlopen", "read_text", "read_bytes", "write_text", "write_bytes",
    "hf_hub_download", "load_state_dict_from_url", "download_url_to_file",
}  # fmt: skip


def _check_generated(text: str) -> None:
    """The promises the header makes, checked on the text itself: it parses, imports only torch/timm/transformers and
    the standard library's typing helpers, and names nothing that reads files, runs code or opens connections."""
    tree = ast.parse(text, filename=MODELING_FILE)
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            sources = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            for source in sources:
                if source.split(".")[0] not in (*THIRD_PARTY, "typing", "collections"):
                    problems.append(f"line {node.lineno} imports {source}")
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
            problems.append(f"line {node.lineno} uses {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_ATTRIBUTES:
            problems.append(f"line {node.lineno} uses .{node.attr}")
    if problems:
        raise GenerationError(f"{MODELING_FILE} would break its promises: " + "; ".join(problems[:10]))
