from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from kernel import Kernel, ServiceState, hookimpl
from kernel.errors import (
    ConfigError,
    DependencyError,
    ManifestError,
    ServiceAccessError,
    ServiceNotFoundError,
    ServiceStartError,
    SettingsError,
)
from tests.conftest import EM_INMEMORY, write_service

pytestmark = pytest.mark.anyio

CODE = """
from kernel import BaseService
class Svc(BaseService):
    async def start(self):
        if self.settings.get("fail"):
            raise RuntimeError("start failed on purpose")
"""


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    @hookimpl
    def kernel_service_loaded(self, name: str) -> None:
        self.calls.append(("loaded", name))

    @hookimpl
    def kernel_service_started(self, name: str) -> None:
        self.calls.append(("started", name))

    @hookimpl
    def kernel_service_failed(self, name: str, error: BaseException) -> None:
        self.calls.append(("failed", name))

    @hookimpl
    def kernel_service_stopped(self, name: str) -> None:
        self.calls.append(("stopped", name))

    @hookimpl
    def kernel_started(self) -> None:
        self.calls.append(("kernel", "started"))

    @hookimpl
    def kernel_stopping(self) -> None:
        self.calls.append(("kernel", "stopping"))

    def of(self, what: str) -> list[str]:
        return [n for w, n in self.calls if w == what]


def tree(root: Path, spec: dict[str, dict[str, Any]]) -> Path:
    for name, manifest in spec.items():
        write_service(root, name, {"global": True, **manifest}, CODE)
    return root


async def test_start_in_dependency_order_stop_in_reverse(tmp_path: Path) -> None:
    tree(tmp_path, {"app": {"dependencies": ["db"]}, "db": {}, "core": {"kernelMode": True}})
    rec = Recorder()
    async with Kernel([tmp_path], plugins=[rec], builtins=False) as kernel:
        assert rec.of("started") == ["core", "db", "app"]
        assert kernel.service_states() == {n: ServiceState.RUNNING for n in ("core", "db", "app")}
        assert "running=3" in repr(kernel)
    assert rec.of("stopped") == ["app", "db", "core"]
    assert rec.calls[-4] == ("kernel", "stopping")
    assert ("kernel", "started") in rec.calls


async def test_fail_on_error_stops_what_started_in_reverse(tmp_path: Path) -> None:
    tree(tmp_path, {"a": {}, "b": {"dependencies": ["a"]}, "c": {"dependencies": ["b"], "custom": {"fail": True}}})
    rec = Recorder()
    kernel = Kernel([tmp_path], plugins=[rec], builtins=False)
    with pytest.raises(ServiceStartError, match=r"service 'c' failed to start: RuntimeError: start failed on purpose\n  at .*c/service\.py:6, in start: raise") as info:
        await kernel.start()
    assert info.value.service == "c"
    assert rec.of("failed") == ["c"]
    assert rec.of("stopped") == ["b", "a"]


async def test_soft_failure_skips_dependents_and_the_rest_runs(tmp_path: Path) -> None:
    tree(tmp_path, {
        "flaky": {"failOnError": False, "custom": {"fail": True}},
        "needs_flaky": {"failOnError": False, "dependencies": ["flaky"]},
        "strict_needs_flaky": {"dependencies": ["flaky"]},  # failOnError true: skipped all the same
        "needs_strict": {"dependencies": ["strict_needs_flaky"]},
        "fine": {},
    })
    with structlog.testing.capture_logs() as logs:
        async with Kernel([tmp_path], builtins=False) as kernel:
            states = kernel.service_states()
            assert states == {"flaky": "failed", "needs_flaky": "skipped", "strict_needs_flaky": "skipped",
                              "needs_strict": "skipped", "fine": "running"}
            assert "dependencies failed (flaky)" in str(kernel.service_error("needs_flaky"))
            assert "dependencies failed (strict_needs_flaky)" in str(kernel.service_error("needs_strict"))
            kernel.get_service("fine")
            with pytest.raises(ServiceNotFoundError, match="service 'flaky' is failed: start failed on purpose"):
                kernel.get_service("flaky")
    skipped = [e for e in logs if e["event"] == "service skipped: its dependencies failed"]
    assert [(e["service"], e["failed_dependencies"]) for e in skipped] == [
        ("needs_flaky", ["flaky"]), ("strict_needs_flaky", ["flaky"]), ("needs_strict", ["strict_needs_flaky"])]


async def test_visibility(tmp_path: Path) -> None:
    write_service(tmp_path, "private", {}, CODE)
    write_service(tmp_path, "user", {"dependencies": ["private"]}, CODE)
    write_service(tmp_path, "public", {"global": True}, CODE)
    async with Kernel([tmp_path], builtins=False) as kernel:
        assert kernel.get_service("public").name == "public"
        user = kernel.find_service("user")
        assert user.get_service("private").name == "private"
        assert user.get_service("public").name == "public"
        with pytest.raises(ServiceAccessError, match=r"'private' is not global and application code does not list it.*handed to: user"):
            kernel.get_service("private")
        with pytest.raises(ServiceAccessError, match="service 'public' does not list it"):
            kernel.find_service("public").get_service("private")
        with pytest.raises(ServiceNotFoundError, match=r"no service named 'nope' \(known services: private, public, user\)"):
            kernel.get_service("nope")


async def test_custom_settings_validated_by_service_model(tmp_path: Path) -> None:
    write_service(tmp_path, "typed", {"global": True, "custom": {"size": "big", "extra": 1}}, """
        from pydantic import BaseModel, ConfigDict
        from kernel import BaseService
        class Cfg(BaseModel):
            model_config = ConfigDict(extra="forbid")
            size: int = 1
        class Typed(BaseService):
            settings_model = Cfg
    """)
    with pytest.raises(ServiceStartError) as info:
        await Kernel([tmp_path], builtins=False).start()
    cause = info.value.__cause__
    assert isinstance(cause, ConfigError)
    assert {f for f, _ in cause.problems} == {"custom.size", "custom.extra"}
    assert str(tmp_path / "typed" / "config.json") in str(info.value)


async def test_settings_override_and_unknown_override(tmp_path: Path) -> None:
    tree(tmp_path, {"a": {"custom": {"x": 1}}})
    async with Kernel([tmp_path], builtins=False, settings={"a": {"x": 2}}) as kernel:
        assert kernel.get_service("a").settings == {"x": 2}
    with pytest.raises(SettingsError, match="'zzz': zzz: no service of that name is loaded \\(known services: a\\)"):
        await Kernel([tmp_path], builtins=False, settings={"zzz": {}}).start()


async def test_bad_manifest_fails_before_anything_starts(tmp_path: Path) -> None:
    rec = Recorder()
    tree(tmp_path, {"good": {}})
    write_service(tmp_path, "bad", {"kernelMode": 3})
    with pytest.raises(ManifestError, match="kernelMode"):
        await Kernel([tmp_path], plugins=[rec]).start()
    assert rec.calls == []


async def test_dependency_errors_surface(tmp_path: Path) -> None:
    tree(tmp_path, {"a": {"dependencies": ["b"]}, "b": {"dependencies": ["a"]}})
    with pytest.raises(DependencyError, match="cycle: a -> b -> a"):
        await Kernel([tmp_path], builtins=False).start()


async def test_class_name_must_match_manifest(tmp_path: Path) -> None:
    write_service(tmp_path, "x", {"name": "x"}, """
        from kernel import BaseService
        class X(BaseService):
            name = "other"
    """)
    with pytest.raises(ServiceStartError, match="declares name 'other' but its manifest"):
        await Kernel([tmp_path], builtins=False).start()


async def test_execution_manager_is_kernel_mode_and_first(tmp_path: Path) -> None:
    tree(tmp_path, {"early": {}})
    rec = Recorder()
    async with Kernel([tmp_path], plugins=[rec], settings={"execution-manager": EM_INMEMORY}) as kernel:
        started = rec.of("started")
        assert started[0] == "execution-manager" and sorted(started[1:]) == ["early", "jobs"]
        assert kernel.get_service("execution-manager").settings.node_type == "inmemory"


def test_run_from_sync_code(tmp_path: Path) -> None:
    tree(tmp_path, {"a": {}})

    async def main(kernel: Kernel) -> str:
        return kernel.get_service("a").name

    assert Kernel([tmp_path], builtins=False).run(main) == "a"


async def test_plugins_receive_execution_manager_events(tmp_path: Path) -> None:
    seen: list[tuple[str, dict]] = []

    class Listener:
        @hookimpl
        def kernel_event(self, event: str, payload: dict) -> None:
            seen.append((event, dict(payload)))

    async with Kernel([], plugins=[Listener()], settings={"execution-manager": EM_INMEMORY}) as kernel:
        em = kernel.get_service("execution-manager")
        assert await em.submit(abs, -4) == 4
    started = [p for e, p in seen if e == "worker-started"]
    assert started and started[0]["node_type"] == "inmemory"
    assert any(e == "worker-terminated" and p["expected"] for e, p in seen)


async def test_a_later_failure_stops_the_pool_and_leaves_no_process(tmp_path: Path) -> None:
    tree(tmp_path, {"broken": {"custom": {"fail": True}}})
    rec = Recorder()
    kernel = Kernel([tmp_path], plugins=[rec], settings={"execution-manager": {"minWorkers": 2, "maxWorkers": 2}})
    with pytest.raises(ServiceStartError, match="'broken'"):
        await kernel.start()
    assert "execution-manager" in rec.of("stopped") and "broken" not in rec.of("stopped")
    # the autouse fixture checks that both worker processes are gone


async def test_max_workers_null_means_cpus_minus_one() -> None:
    import os

    async with Kernel([], settings={"execution-manager": {**EM_INMEMORY, "maxWorkers": None}}) as kernel:
        assert kernel.get_service("execution-manager").settings.max_workers == max(1, (os.cpu_count() or 2) - 1)


def test_log_level_from_config_or_environment() -> None:
    import os
    import subprocess
    import sys

    code = ("import structlog; from kernel import Kernel; Kernel([]{arg}); log = structlog.get_logger(); "
            "log.info('info-line'); log.warning('warning-line')")

    def run(arg: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", code.format(arg=arg)], capture_output=True, text=True,
                              timeout=30, env={**os.environ, **env})

    out = run(", log_level='warning'", {"KERNEL_LOG_LEVEL": "debug"})
    assert "warning-line" in out.stderr and "info-line" not in out.stderr  # the argument wins
    out = run("", {"KERNEL_LOG_LEVEL": "warning"})
    assert "warning-line" in out.stderr and "info-line" not in out.stderr
    out = run("", {"KERNEL_LOG_LEVEL": ""})
    assert "info-line" in out.stderr
    out = run(", log_level='loud'", {})
    assert out.returncode == 1 and "unknown log level 'LOUD'" in out.stderr


async def test_a_running_kernel_keeps_its_setup_out_of_the_collectors_way() -> None:
    """What exists once kernels have started is frozen (gc.freeze) while any runs, and
    thawed when the last one stops, so nothing it leaves behind stays uncollectable."""
    import gc

    settings = {"execution-manager": EM_INMEMORY}
    assert gc.get_freeze_count() == 0
    async with Kernel([], settings=settings) as first:
        assert gc.get_freeze_count() > 1000  # the modules, classes and services set up so far
        async with Kernel([], settings=settings):
            pass
        assert gc.get_freeze_count() > 1000 and first.running  # still frozen: one kernel runs
    assert gc.get_freeze_count() == 0
