"""Task types: what a job can be. Each is a :class:`TaskType` that checks a request's
own fields (in the kernel, before the job is acknowledged; no user code runs there) and
starts the job's call on the execution manager. Plugins add types through the
``jobs_task_types`` hook (:mod:`.hookspecs`); the built-ins below are plugged in the same
way (:mod:`.plugin`)."""

from __future__ import annotations

import ast
import base64
import binascii
import importlib.machinery
import json
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

from kernel.decorator import call_options
from kernel.interfaces import ServiceHost

from . import work
from .settings import JobError, JobSettings


@dataclass(frozen=True)
class Launch:
    """What a task type starts a job's call with: the kernel, and the job's options."""

    kernel: ServiceHost
    submit: Callable[..., Any]  # the execution manager's submit, with the job's options bound
    options: Mapping[str, Any]  # priority, project, timeout, retries


class TaskType(ABC):
    """One kind of job (see the module docstring)."""

    name: ClassVar[str]
    setting: ClassVar[str | None] = None  # a JobSettings flag that must be on (allow_shell...)

    def allowed(self, settings: JobSettings) -> bool:
        return self.setting is None or bool(getattr(settings, self.setting))

    @abstractmethod
    def check(self, task: Mapping[str, Any]) -> dict[str, Any]:
        """The task's own fields, checked and with defaults filled in.

        :raises JobError: naming the field at fault (an unknown field too).
        """

    @abstractmethod
    def start(self, launch: Launch, task: Mapping[str, Any]) -> Any:
        """Start the job's call; return its future (its result is the job's, as JSON)."""

    def label(self, task: Mapping[str, Any]) -> str:
        """What the job runs, in a few words: the name of a job given none (its type by
        default)."""
        return self.name


def _fields(task: Mapping[str, Any], required: tuple[str, ...], optional: tuple[str, ...], kind: str) -> None:
    for name in required:
        if name not in task:
            raise JobError(f"a {kind} job needs {name!r}", field=name)
    unknown = sorted(set(task) - set(required) - set(optional))
    if unknown:
        raise JobError(f"a {kind} job has no field {unknown[0]!r} (its fields: "
                       f"{', '.join((*required, *optional))})", field=unknown[0])


def _args(task: Mapping[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    args, kwargs = task.get("args", []), task.get("kwargs", {})
    if not isinstance(args, list):
        raise JobError(f"args must be a JSON array, not {type(args).__name__}", field="args")
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise JobError("kwargs must be a JSON object", field="kwargs")
    return args, kwargs


def _strings(value: Any, field: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise JobError(f"{field} must be a list of strings", field=field)
    return value


_FOUND: dict[str, str | None] = {}  # module -> its source file, if one was found


def importable(module: str) -> bool:
    """Whether ``module`` can be found here, without running any of its code or its
    parent packages' (a job's code runs on workers only): each part is looked for with
    the import system's finders in its parent's folders, and nothing is imported. A
    package already imported here is taken as it is. Found ones are remembered: a job API
    takes the same few modules again and again (a missing one is looked for again: it
    may be installed since)."""
    if module in _FOUND or module in sys.modules:
        return True
    origin: str | None = None
    parts = module.split(".")
    if not all(part.isidentifier() for part in parts):
        return False
    path: list[str] | None = None
    for i in range(len(parts)):
        name = ".".join(parts[: i + 1])
        loaded = sys.modules.get(name)
        if loaded is not None:
            path = getattr(loaded, "__path__", None)
        else:
            spec = _find(name, path)
            if spec is None:
                return False
            origin = spec.origin
            path = list(spec.submodule_search_locations or []) or None
        if path is None and i < len(parts) - 1:
            return False  # a module, not a package: it holds no submodules
    _FOUND[module] = origin
    return True


def defines(module: str, name: str) -> bool | None:
    """Whether the source of ``module`` (found by :func:`importable`) defines ``name`` at
    its top level, read, never run; None when that cannot be told so (no Python source,
    a star import, a module ``__getattr__``)."""
    origin = _FOUND.get(module) or getattr(sys.modules.get(module), "__file__", None)
    if not origin or not origin.endswith(".py"):
        return None
    try:
        with open(origin, "rb") as source:
            tree = ast.parse(source.read())
    except (OSError, SyntaxError, ValueError):
        return None  # the worker's import will say what is wrong
    names: set[str] = set()
    statements = list(tree.body)
    while statements:
        node = statements.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                if alias.name == "*":
                    return None
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.If | ast.Try | ast.With):  # definitions under a condition count
            for block in ("body", "orelse", "finalbody", "handlers"):
                statements.extend(getattr(node, block, []))
        elif isinstance(node, ast.ExceptHandler):
            statements.extend(node.body)
    return None if "__getattr__" in names else name in names


def _find(name: str, path: list[str] | None) -> importlib.machinery.ModuleSpec | None:
    """What ``importlib.util.find_spec`` does for one name, minus importing the parent."""
    for finder in sys.meta_path:
        find = getattr(finder, "find_spec", None)
        if find is None:
            continue
        try:
            spec: importlib.machinery.ModuleSpec | None = find(name, path)
        except (ImportError, ValueError):
            return None
        if spec is not None:
            return spec
    return None


class ServiceMethod(TaskType):
    """``{"service": "prime-counter", "method": "count_range", "args": [0, 1000]}``: a
    ``@distributed`` method of a service the kernel runs."""

    name = "service"

    def check(self, task: Mapping[str, Any]) -> dict[str, Any]:
        _fields(task, ("service", "method"), ("args", "kwargs"), "service")
        for field in ("service", "method"):
            if not isinstance(task[field], str) or not task[field]:
                raise JobError(f"{field} must be a name", field=field)
        if task["method"].startswith("_"):
            raise JobError(f"method {task['method']!r} is private", field="method")
        args, kwargs = _args(task)
        return {"service": task["service"], "method": task["method"], "args": args, "kwargs": kwargs}

    def label(self, task: Mapping[str, Any]) -> str:
        return f"{task['service']}.{task['method']}"

    def bound(self, kernel: ServiceHost, task: Mapping[str, Any]) -> Callable[..., Any]:
        """The method, checked against the running kernel.

        :raises JobError: no such service or method, or it does not run on workers.
        """
        service, method = task["service"], task["method"]
        try:
            instance = kernel.get_service(service)
        except Exception as exc:
            raise JobError(f"no service {service!r}: {exc}", field="service") from None
        distributed = getattr(type(instance), "__distributed_methods__", ())
        if method not in distributed:
            shown = ", ".join(sorted(distributed)) or "none"
            raise JobError(f"service {service!r} has no @distributed method {method!r} (jobs run on workers; "
                           f"its @distributed methods: {shown})", field="method")
        bound: Callable[..., Any] = getattr(instance, method)
        return bound

    def start(self, launch: Launch, task: Mapping[str, Any]) -> Any:
        method = self.bound(launch.kernel, task)
        with call_options(**launch.options):
            return method(*task["args"], **task["kwargs"])


class FunctionRef(TaskType):
    """``{"function": "package.module:function", "args": [...], "kwargs": {...}}``."""

    name = "function"

    def check(self, task: Mapping[str, Any]) -> dict[str, Any]:
        _fields(task, ("function",), ("args", "kwargs"), "function")
        ref = task["function"]
        if not isinstance(ref, str):
            raise JobError("function must be 'package.module:function'", field="function")
        module, sep, attribute = ref.partition(":")
        if not sep or not module or not attribute:
            raise JobError(f"function must be 'package.module:function', not {ref!r}", field="function")
        if not importable(module):
            raise JobError(f"function {ref!r}: no module {module!r} can be imported here", field="function")
        first = attribute.split(".")[0]
        if defines(module, first) is False:
            raise JobError(f"function {ref!r}: module {module!r} has no {first!r} at its top level (its source was "
                           "read, not run)", field="function")
        args, kwargs = _args(task)
        return {"function": ref, "args": args, "kwargs": kwargs}

    def label(self, task: Mapping[str, Any]) -> str:
        return str(task["function"])

    def start(self, launch: Launch, task: Mapping[str, Any]) -> Any:
        return launch.submit(work.call_reference, task["function"], task["args"], task["kwargs"])


class Module(TaskType):
    """``{"module": "package.tool", "argv": ["--flag"]}``: ``python -m`` on a worker's
    machine, in its own interpreter (output into the job's log, as a command's)."""

    name = "module"

    def check(self, task: Mapping[str, Any]) -> dict[str, Any]:
        _fields(task, ("module",), ("argv",), "module")
        module = task["module"]
        if not isinstance(module, str) or not module:
            raise JobError("module must be a module name", field="module")
        if not importable(module):
            raise JobError(f"no module {module!r} can be imported here", field="module")
        return {"module": module, "argv": _strings(task.get("argv", []), "argv")}

    def label(self, task: Mapping[str, Any]) -> str:
        return f"python -m {task['module']}"

    def start(self, launch: Launch, task: Mapping[str, Any]) -> Any:
        return launch.submit(work.run_module, task["module"], task["argv"], launch.options.get("timeout"))


class Code(TaskType):
    """``{"code": "result = 6 * 7"}``: Python source, off unless ``allowCode``."""

    name = "code"
    setting = "allow_code"

    def check(self, task: Mapping[str, Any]) -> dict[str, Any]:
        _fields(task, ("code",), (), "code")
        if not isinstance(task["code"], str):
            raise JobError("code must be Python source text", field="code")
        try:
            compile(task["code"], "<job>", "exec")
        except SyntaxError as exc:
            raise JobError(f"code does not compile: {exc.msg} (line {exc.lineno})", field="code") from None
        return {"code": task["code"]}

    def start(self, launch: Launch, task: Mapping[str, Any]) -> Any:
        return launch.submit(work.run_code, task["code"])


class Shell(TaskType):
    """``{"command": ["ls", "-l"], "env": {...}, "cwd": "/tmp"}``: a command, its output
    into the job's log line by line; no shell unless ``"shell": true``. Off unless ``allowShell``."""

    name = "shell"
    setting = "allow_shell"

    def check(self, task: Mapping[str, Any]) -> dict[str, Any]:
        _fields(task, ("command",), ("shell", "env", "cwd"), "shell")
        shell = task.get("shell", False)
        if not isinstance(shell, bool):
            raise JobError("shell must be true or false", field="shell")
        command = task["command"]
        if shell:
            if not isinstance(command, str) or not command:
                raise JobError("with shell: true, command is one string", field="command")
        elif not _strings(command, "command") or not command:
            raise JobError("command is an argv list, e.g. [\"ls\", \"-l\"]", field="command")
        env = task.get("env", {})
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise JobError("env must map names to strings", field="env")
        cwd = task.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            raise JobError("cwd must be a folder path", field="cwd")
        return {"command": command, "shell": shell, "env": env, "cwd": cwd}

    def start(self, launch: Launch, task: Mapping[str, Any]) -> Any:
        return launch.submit(work.run_command, task["command"], task["shell"], task["env"] or None, task["cwd"],
                             launch.options.get("timeout"))


class Http(TaskType):
    """``{"url": "https://...", "method": "POST", "headers": {...}, "body": "...", "expect": [200]}``."""

    name = "http"

    def check(self, task: Mapping[str, Any]) -> dict[str, Any]:
        _fields(task, ("url",), ("method", "headers", "body", "json", "expect"), "http")
        url = task["url"]
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
            raise JobError(f"url must be an http:// or https:// address, not {url!r}", field="url")
        method = task.get("method", "GET")
        if not isinstance(method, str) or not method.isalpha():
            raise JobError(f"method must be an HTTP method, not {method!r}", field="method")
        headers = task.get("headers", {})
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise JobError("headers must map names to strings", field="headers")
        body = task.get("body")
        if "json" in task:
            body = json.dumps(task["json"])
            headers = {"Content-Type": "application/json", **headers}
        elif body is not None and not isinstance(body, str):
            raise JobError("body must be text (or give json)", field="body")
        expect = task.get("expect", [200, 201, 202, 204])
        if not isinstance(expect, list) or not expect or not all(isinstance(c, int) for c in expect):
            raise JobError("expect must be a list of HTTP status codes", field="expect")
        return {"url": url, "method": method.upper(), "headers": headers, "body": body, "expect": expect}

    def start(self, launch: Launch, task: Mapping[str, Any]) -> Any:
        return launch.submit(work.http_request, task["method"], task["url"], task["headers"], task["body"],
                             task["expect"], launch.options.get("timeout"))


class Pickled(TaskType):
    """``{"type": "pickle", "payload": "<base64>"}``: a callable and its arguments as the
    Python client pickles them (``client.submit(fn, *args, **kwargs)``); unpickled on a
    worker only, never in the kernel."""

    name = "pickle"

    def check(self, task: Mapping[str, Any]) -> dict[str, Any]:
        _fields(task, ("payload",), (), "pickle")
        payload = task["payload"]
        try:
            if not isinstance(payload, str):
                raise ValueError
            base64.b64decode(payload, validate=True)
        except (ValueError, binascii.Error):
            raise JobError("payload must be base64 text (what the Python client sends)", field="payload") from None
        return {"payload": payload}

    def start(self, launch: Launch, task: Mapping[str, Any]) -> Any:
        return launch.submit(work.call_pickled, base64.b64decode(task["payload"]))


BUILTIN: tuple[type[TaskType], ...] = (ServiceMethod, FunctionRef, Module, Code, Shell, Http, Pickled)
