"""Reading the plugin's source for the docs: modules parsed with ast, string expressions rendered with placeholders, and the diagnoses a check's body and helpers can raise."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

MAX_DEPTH = 4  # helper calls followed from a check's body

PACKAGE = "pytest_gpuhost"


SUITES = f"{PACKAGE}.suites"


@dataclass(frozen=True)
class DiagnosisDoc:
    """One failure (or warning) a check can report: its FOUND, CAUSE and FIX as written in the source."""

    level: str  # "fail" or "warn"
    found: str
    cause: str
    fix: str
    origin: tuple[str, str]  # where it is written: file, and function or table


def in_package(module: str | None) -> bool:
    return module is not None and (module == PACKAGE or module.startswith(PACKAGE + "."))


class Module:
    """One parsed source file: its top-level functions, constants and imports from the package."""

    def __init__(self, name: str, path: Path, label: str) -> None:
        self.name = name
        self.path = path
        self.label = label  # shown in the docs: suites/x.py or pytest_gpuhost/x.py
        self.tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        self.functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
        self.constants: dict[str, ast.expr] = {}
        self.imports: dict[str, tuple[str, str | None]] = {}  # local name -> (module, name or None)
        for node in self.tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.functions[node.name] = node
            elif isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
                if isinstance(target, ast.Name):
                    self.constants[target.id] = node.value
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
                self.constants[node.target.id] = node.value
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and in_package(node.module):
                assert node.module is not None
                for alias in node.names:
                    self.imports[alias.asname or alias.name] = (node.module, alias.name)


class Sources:
    """Finds and parses the package's and the suite's modules on demand."""

    def __init__(self, package_dir: Path, suite_dir: Path) -> None:
        self.package_dir = package_dir
        self.suite_dir = suite_dir
        self._cache: dict[str, Module | None] = {}

    def module(self, name: str) -> Module | None:
        if name not in self._cache:
            self._cache[name] = self._load(name)
        return self._cache[name]

    def _load(self, name: str) -> Module | None:
        if name.startswith(SUITES + "."):
            base, parts, label_root = self.suite_dir, name[len(SUITES) + 1 :].split("."), "suites"
        elif name.startswith(PACKAGE + "."):
            base, parts, label_root = self.package_dir, name[len(PACKAGE) + 1 :].split("."), PACKAGE
        else:
            return None
        for candidate in (base.joinpath(*parts).with_suffix(".py"), base.joinpath(*parts, "__init__.py")):
            if candidate.is_file():
                label = "/".join((label_root, *candidate.relative_to(base).parts))
                return Module(name, candidate, label)
        return None

    def is_module(self, name: str) -> bool:
        return self.module(name) is not None

    def resolve(self, module: Module, name: str) -> tuple[Module, str] | None:
        """Where ``name`` as used in ``module`` is defined: that module and its name there."""
        if name in module.functions or name in module.constants:
            return module, name
        imported = module.imports.get(name)
        if imported is None:
            return None
        source, original = imported
        target = self.module(source)
        if target is None or original is None:
            return None
        if original in target.functions or original in target.constants:
            return target, original
        return self.resolve(target, original) if original in target.imports else None

    def module_alias(self, module: Module, name: str) -> Module | None:
        """The module ``name`` refers to in ``module`` (``from pytest_gpuhost import numerics``)."""
        imported = module.imports.get(name)
        if imported is None or imported[1] is None:
            return None
        return self.module(f"{imported[0]}.{imported[1]}")


def _placeholder(expr: ast.expr) -> str:
    if isinstance(expr, ast.Name):
        return "{" + expr.id + "}"
    if isinstance(expr, ast.Attribute):
        return "{" + expr.attr + "}"
    return "{…}"


class Renderer:
    """Turns a string expression of the source into readable text; ``{name}`` marks what varies."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def text(self, expr: ast.expr, module: Module, depth: int = 0) -> tuple[str, bool]:
        """The text and whether any of it is literal (written in the source, not computed)."""
        if depth > 8:
            return _placeholder(expr), False
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            return expr.value, bool(expr.value.strip())
        if isinstance(expr, ast.JoinedStr):
            pieces = [self.text(value, module, depth + 1) for value in expr.values]
            return "".join(p for p, _ in pieces), any(lit for _, lit in pieces)
        if isinstance(expr, ast.FormattedValue):
            inner, literal = self.text(expr.value, module, depth + 1)
            return (inner, True) if literal else (_placeholder(expr.value), False)
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
            left, right = self.text(expr.left, module, depth + 1), self.text(expr.right, module, depth + 1)
            return left[0] + right[0], left[1] or right[1]
        if isinstance(expr, ast.Name):
            found = self.sources.resolve(module, expr.id)
            if found is not None and found[1] in found[0].constants:
                value = found[0].constants[found[1]]
                if _is_text(value):
                    return self.text(value, found[0], depth + 1)
            return _placeholder(expr), False
        if isinstance(expr, ast.IfExp):
            body, orelse = self.text(expr.body, module, depth + 1), self.text(expr.orelse, module, depth + 1)
            if all(isinstance(e, ast.Constant) for e in (expr.body, expr.orelse)):
                return "{" + body[0] + "|" + orelse[0] + "}", False
            return body
        if isinstance(expr, ast.Subscript) and isinstance(expr.value, ast.Name):
            found = self.sources.resolve(module, expr.value.id)  # the table may be imported
            owner = found[0] if found is not None else module
            entry = _dict_entry(owner, expr, found[1] if found is not None else None)
            if entry is not None and _is_text(entry):
                return self.text(entry, owner, depth + 1)
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name):
            found = self.sources.resolve(module, expr.func.id)
            if found is not None and found[1] in found[0].functions:
                returned = _single_return(found[0].functions[found[1]])
                if returned is not None and _is_text(returned):
                    return self.text(returned, found[0], depth + 1)
        return _placeholder(expr), False


def _dict_entry(module: Module, node: ast.Subscript, name: str | None = None) -> ast.expr | None:
    """``TABLE["key"]`` where TABLE is a module-level dict of ``module`` (there called ``name``):
    the entry's expression."""
    if not isinstance(node.value, ast.Name) or not isinstance(node.slice, ast.Constant):
        return None
    table = module.constants.get(name or node.value.id)
    if not isinstance(table, ast.Dict):
        return None
    for key, value in zip(table.keys, table.values, strict=True):
        if isinstance(key, ast.Constant) and key.value == node.slice.value:
            return value
    return None


def _is_text(expr: ast.expr) -> bool:
    if isinstance(expr, ast.Constant):
        return isinstance(expr.value, str)
    if isinstance(expr, ast.JoinedStr):
        return True
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
        return _is_text(expr.left) or _is_text(expr.right)
    return False


def _single_return(function: ast.FunctionDef | ast.AsyncFunctionDef) -> ast.expr | None:
    body = [n for n in function.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    if len(body) == 1 and isinstance(body[0], ast.Return) and body[0].value is not None:
        return body[0].value
    return None


def _call_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _diagnosis_args(call: ast.Call) -> tuple[ast.expr, ast.expr, ast.expr] | None:
    """The found, cause and fix arguments of a ``fail``/``warn``/``Diagnosis`` call, if it has them."""
    keywords = {k.arg: k.value for k in call.keywords if k.arg}
    args = list(call.args[:3])
    for name in ("found", "cause", "fix")[len(args) :]:
        if name not in keywords:
            return None
        args.append(keywords[name])
    if any(isinstance(a, ast.Starred) for a in args):
        return None
    return args[0], args[1], args[2]


def _warned_calls(function: ast.AST) -> set[int]:
    """Ids of the calls whose result goes to a warning: nested in ``warn*(...)``, or assigned and passed."""
    warned: set[int] = set()
    warned_names: set[str] = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Call) and "warn" in (_call_name(node) or ""):
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                for inner in ast.walk(arg):
                    if isinstance(inner, ast.Call):
                        warned.add(id(inner))
                    elif isinstance(inner, ast.Name):
                        warned_names.add(inner.id)
    for node in ast.walk(function):
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and any(isinstance(t, ast.Name) and t.id in warned_names for t in node.targets)
        ):
            warned.add(id(node.value))
    return warned


class Collector:
    """Walks a check's body and the helpers it calls, gathering the diagnoses written in them."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources
        self.render = Renderer(sources)

    def from_function(
        self, module: Module, function: ast.FunctionDef | ast.AsyncFunctionDef, level: str = "fail"
    ) -> list[DiagnosisDoc]:
        found: list[DiagnosisDoc] = []
        self._walk(module, function, (module.label, function.name), level, 0, set(), found)
        return found

    def from_module(self, module: Module) -> list[DiagnosisDoc]:
        found: list[DiagnosisDoc] = []
        for name, function in module.functions.items():
            self._walk(module, function, (module.label, name), "fail", MAX_DEPTH, set(), found)
        return found

    def _walk(
        self,
        module: Module,
        function: ast.AST,
        origin: tuple[str, str],
        level: str,
        depth: int,
        seen: set[tuple[str, str]],
        out: list[DiagnosisDoc],
    ) -> None:
        warned = _warned_calls(function)
        for node in _ordered_calls(function):
            name = _call_name(node)
            if name is None:
                continue
            args = _diagnosis_args(node) if name in ("fail", "warn", "Diagnosis") else None
            if args is not None:
                texts = [self.render.text(a, module) for a in args]
                if texts[1][1] or texts[2][1]:  # a cause or fix written in the source
                    this_level = name if name in ("fail", "warn") else level
                    if id(node) in warned:
                        this_level = "warn"
                    out.append(DiagnosisDoc(this_level, texts[0][0], texts[1][0], texts[2][0], origin))
                continue
            if depth >= MAX_DEPTH:
                continue
            target = self._callee(module, node)
            if target is None:
                continue
            callee_module, callee = target
            key = (callee_module.name, callee.name)
            if key in seen:
                continue
            seen.add(key)
            sub_level = "warn" if id(node) in warned else level
            self._walk(
                callee_module,
                callee,
                (callee_module.label, callee.name),
                sub_level,
                depth + 1,
                seen,
                out,
            )
            for arg in node.args:
                out.extend(self._table_pairs(module, arg, origin, sub_level))

    def _callee(
        self, module: Module, call: ast.Call
    ) -> tuple[Module, ast.FunctionDef | ast.AsyncFunctionDef] | None:
        if isinstance(call.func, ast.Name):
            found = self.sources.resolve(module, call.func.id)
            if found is not None and found[1] in found[0].functions:
                return found[0], found[0].functions[found[1]]
        elif isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name):
            target = self.sources.module_alias(module, call.func.value.id)
            if target is not None and call.func.attr in target.functions:
                return target, target.functions[call.func.attr]
        return None

    def _table_pairs(
        self, module: Module, arg: ast.expr, origin: tuple[str, str], level: str
    ) -> list[DiagnosisDoc]:
        """A module-level table of ``(cause, fix)`` pairs handed to a helper (``NVML_DIAGNOSES``)."""
        if not isinstance(arg, ast.Name) or not isinstance(module.constants.get(arg.id), ast.Dict):
            return []
        table = module.constants[arg.id]
        assert isinstance(table, ast.Dict)
        out: list[DiagnosisDoc] = []
        for key, value in zip(table.keys, table.values, strict=True):
            if isinstance(value, ast.Subscript):
                value = _dict_entry(module, value) or value
            if isinstance(value, ast.Tuple) and len(value.elts) == 2:
                cause, fix = (self.render.text(e, module) for e in value.elts)
                when = key.value if isinstance(key, ast.Constant) and isinstance(key.value, str) else "?"
                found = f"an error of kind `{when}`: {{…}}"
                out.append(DiagnosisDoc(level, found, cause[0], fix[0], (origin[0], arg.id)))
        return out


def _ordered_calls(function: ast.AST) -> Iterator[ast.Call]:
    """The calls of a function in source order, not descending into nested functions or classes."""
    calls: list[ast.Call] = []
    stack: list[ast.AST] = [function]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                continue
            if isinstance(child, ast.Call):
                calls.append(child)
            stack.append(child)
    yield from sorted(calls, key=lambda c: (c.lineno, c.col_offset))


def dedupe(diagnoses: Iterable[DiagnosisDoc]) -> tuple[DiagnosisDoc, ...]:
    seen: set[tuple[str, str, str, str]] = set()
    out: list[DiagnosisDoc] = []
    for d in diagnoses:
        key = (d.level, d.found, d.cause, d.fix)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return tuple(out)
