"""Start, watch and stop one TorchServe process (Java frontend plus its Python workers)."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from serving.errors import ServerError
from serving.files import atomic_write, tail
from serving.threads import WORKERS_ENV, worker_env
from serving.torchserve.config import ServerSettings, archive_entries, model_names, render_properties
from serving.torchserve.procgroup import (
    check_ports_free,
    find_java,
    find_torchserve,
    group_members,
    looks_like_torchserve,
    terminate_group,
)
from serving.torchserve.state import (
    KEY_FILE,
    STATE_FILE,
    TS_PID_FILE,
    ServerState,
    ServerUrls,
    urls_for,
)
from serving.torchserve.status import management_get, registered_models
from serving.torchserve.worker_log import LoadFailure, WorkerLogScanner

log = logging.getLogger(__name__)

CONFIG_FILE = "config.properties"
STDOUT_FILE = "torchserve.out"
# After the management API first answers, how long a model named in wait_ready may stay unregistered.
_UNREGISTERED_GRACE_S = 5.0
_RANK = {"marker": 0, "traceback": 1, "restarts": 2}


class TorchServeProcess:
    """One TorchServe server in its own process group, with private TEMP/TMPDIR and log directory.

    ``with TorchServeProcess(settings) as ts: ts.wait_ready(); ...`` starts it and always stops it.
    ``detach()`` leaves it running after this Python process exits; stop it with ``stop_from_state``.
    """

    def __init__(self, settings: ServerSettings, *, stop_on_exit: bool = True) -> None:
        self.settings = settings
        self._proc: subprocess.Popen[bytes] | None = None
        self._pgid: int | None = None
        self._scanner: WorkerLogScanner | None = None
        self._failures: dict[str | None, LoadFailure] = {}
        self._stop_on_exit = stop_on_exit
        self._stopped = False

    # --- paths and addresses --------------------------------------------------------------------

    @property
    def runtime_dir(self) -> Path:
        return self.settings.runtime_dir

    @property
    def log_dir(self) -> Path:
        return self.settings.logs

    @property
    def state_path(self) -> Path:
        return self.runtime_dir / STATE_FILE

    @property
    def config_path(self) -> Path:
        return self.runtime_dir / CONFIG_FILE

    @property
    def stdout_path(self) -> Path:
        return self.log_dir / STDOUT_FILE

    @property
    def worker_log(self) -> Path:
        """What the Python workers print, one line per log record."""
        return self.log_dir / "model_log.log"

    @property
    def key_file(self) -> Path:
        """Where TorchServe writes its API keys when token authorization is on."""
        return self.runtime_dir / KEY_FILE

    @property
    def urls(self) -> ServerUrls:
        return urls_for(self.settings)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def pids(self) -> list[int]:
        """Every live process of this server: the wrapper, Java and the Python workers."""
        return group_members(self._pgid) if self._pgid is not None else []

    @property
    def java_pid(self) -> int | None:
        try:
            return int((self.runtime_dir / TS_PID_FILE).read_text().strip())
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # --- start ----------------------------------------------------------------------------------

    def start(self) -> TorchServeProcess:
        """Write config.properties and launch TorchServe in a new session; returns at once."""
        if self._proc is not None:
            raise ServerError("This TorchServeProcess was already started; create a new one.")
        settings = self.settings
        settings.validate()
        if (warning := settings.auth_warning()) is not None:
            log.warning("%s", warning)
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.refuse_live_server()
        check_ports_free(settings)
        find_java()
        self.config_path.write_text(render_properties(settings))
        with contextlib.suppress(FileNotFoundError):
            (self.runtime_dir / TS_PID_FILE).unlink()  # a stale one would make TorchServe print and guess

        cmd = [
            str(find_torchserve()),
            "--start",
            "--foreground",  # the wrapper stays our child and exits when Java does
            "--ts-config",
            str(self.config_path),
            "--model-store",
            str(settings.model_store),
            "--ncs",
        ]
        if settings.log_config is not None:
            cmd += ["--log-config", str(settings.log_config)]
        if not settings.auth_enabled:
            cmd.append("--disable-token-auth")
        if settings.models:
            cmd += ["--models", *archive_entries(settings.models, settings.model_store)]

        env = dict(os.environ)
        # TS_CONFIG_FILE would silently win over --ts-config in TorchServe's wrapper.
        env.pop("TS_CONFIG_FILE", None)
        env.update(
            TEMP=str(self.runtime_dir),  # worker sockets and unpacked archives
            TMPDIR=str(self.runtime_dir),  # the wrapper's pid file
            LOG_LOCATION=str(self.log_dir),
            METRICS_LOCATION=str(self.log_dir),
        )
        env.update(worker_env(settings.workers, os.environ))
        if settings.workers is None:
            env.pop(WORKERS_ENV, None)  # a stale one from our own caller would mislead the workers

        # Both TorchServe's built-in log config and ours write worker output to LOG_LOCATION/model_log.log;
        # a custom log_config must keep that file for wait_ready to explain failed loads.
        self._scanner = WorkerLogScanner([self.worker_log])
        if self.stdout_path.exists():  # keep the previous run's output for one more start
            os.replace(self.stdout_path, self.stdout_path.with_name(STDOUT_FILE + ".1"))
        out = self.stdout_path.open("wb")
        try:
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.runtime_dir,  # key_file.json lands here, not in the caller's directory
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: one signal reaches Java and every worker
            )
        except OSError as exc:
            raise ServerError(f"Could not run {cmd[0]}: {exc}.") from exc
        finally:
            out.close()
        self._pgid = self._proc.pid  # a session leader's pgid is its pid
        state = ServerState(
            pid=self._proc.pid,
            pgid=self._pgid,
            runtime_dir=str(self.runtime_dir),
            log_dir=str(self.log_dir),
            urls=self.urls,
            started_at=time.time(),
            tls_cert=str(self.settings.tls_cert) if self.settings.tls_cert else None,
        )
        try:
            atomic_write(self.state_path, lambda fh: fh.write(state.to_json().encode()))
        except OSError:
            self.stop()  # nobody could find it to stop it later
            raise
        if self._stop_on_exit:
            atexit.register(self.stop)
        log.info(
            "started TorchServe (pid %d) at %s, management %s, logs in %s",
            self._proc.pid,
            self.urls.inference,
            self.urls.management,
            self.log_dir,
        )
        return self

    def detach(self) -> None:
        """Let the server outlive this Python process (stop it later with ``stop_from_state``)."""
        atexit.unregister(self.stop)
        self._stop_on_exit = False

    def refuse_live_server(self) -> None:
        """Raise ServerError if a server recorded in this runtime directory still runs."""
        if not self.state_path.exists():
            return
        try:
            state = ServerState.read(self.state_path)
        except ServerError:
            state = None
        if state is not None and looks_like_torchserve(state.pgid):
            raise ServerError(
                f"A TorchServe server (pid {state.pid}) already runs from {self.runtime_dir}.",
                hint=f"Stop it first (`ckptserve stop --runtime-dir {self.runtime_dir}`, or "
                f"stop_from_state('{self.state_path}') in Python), or run this server beside it with its own "
                "runtime directory and ports (`ckptserve serve --runtime-dir OTHER_DIR --http-port ...`).",
            )
        self.state_path.unlink(missing_ok=True)

    # --- readiness ------------------------------------------------------------------------------

    def wait_ready(self, models: list[str] | None = None, timeout_s: float = 120.0) -> dict[str, int]:
        """Block until each model (default: every registered one) has a READY worker.

        Returns the number of READY workers per model. Raises ServerError at once, with the worker's
        own error, when a model cannot load or the process exits; TorchServe itself would keep
        retrying the worker with growing back-off and never say why.
        """
        if self._proc is None or self._scanner is None:
            raise ServerError("wait_ready() before start(): start the server first.")
        if models is not None:
            models = None if "ALL" in models else model_names(models)
        started = time.monotonic()
        deadline = started + timeout_s
        answered_at: float | None = None
        last_status: dict[str, int | None] = {}
        while True:
            self._raise_if_exited()
            status = self._model_status(models)
            if status is not None:
                answered_at = answered_at or time.monotonic()
                last_status = status
                not_ready = {name for name, ready in status.items() if not ready}
                for name in status.keys() - not_ready:
                    self._failures.pop(name, None)  # it loaded after all
                pending: set[str] | None = not_ready
            else:
                pending = set(models) if models is not None else None  # None: any model
            self._raise_on_load_failure(pending)
            if status is not None and not pending:
                log.info("TorchServe ready after %.1f s: %s", time.monotonic() - started, status)
                return {name: int(count or 0) for name, count in status.items()}
            missing = sorted(name for name, count in last_status.items() if count is None)
            if missing and answered_at and time.monotonic() - answered_at > _UNREGISTERED_GRACE_S:
                raise ServerError(
                    f"Expected model(s) {', '.join(missing)} to be registered, found only "
                    f"{sorted(n for n, c in last_status.items() if c is not None) or 'none'}.",
                    hint=f"Check the names and the archives in {self.settings.model_store}; "
                    f"TorchServe's reason is in {self.log_dir / 'ts_log.log'}.",
                )
            if time.monotonic() > deadline:
                found = f"READY workers per model {last_status}." if answered_at else "no API answer."
                raise ServerError(
                    f"TorchServe was not ready after {timeout_s:.0f} s: {found}",
                    hint=f"Read {self.log_dir / 'model_log.log'} and {self.stdout_path}.",
                )
            time.sleep(0.25)

    def _raise_if_exited(self) -> None:
        assert self._proc is not None
        code = self._proc.poll()
        if code is None:
            return
        tail = _tail(self.stdout_path, 15)
        raise ServerError(
            f"TorchServe exited with code {code} before it was ready. Last output:\n{tail}",
            hint=f"The full output is in {self.stdout_path} and {self.log_dir / 'ts_log.log'}.",
        )

    def _raise_on_load_failure(self, pending: set[str] | None) -> None:
        assert self._scanner is not None
        # Remember failures of every model: one seen while waiting for another model still counts later.
        for failure in self._scanner.poll():
            known = self._failures.get(failure.model)
            # The handler's own marker line says it best; a traceback's last line comes next.
            if known is None or _RANK[failure.source] <= _RANK[known.source]:
                self._failures[failure.model] = failure
        relevant = [
            f for model, f in self._failures.items() if pending is None or model is None or model in pending
        ]
        if relevant:
            failure = min(relevant, key=lambda f: _RANK[f.source])
            hint = f"The worker's full output is in {self.worker_log}."
            raise ServerError(_describe_failure(failure), hint=hint)

    def _model_status(self, models: list[str] | None) -> dict[str, int | None] | None:
        """READY workers per model (None: not registered), or None while the API does not answer."""
        try:
            names = list(models) if models is not None else self._registered_models()
            status: dict[str, int | None] = {}
            for name in names:
                described = self._get_json(f"/models/{urllib.parse.quote(name, safe='')}")
                if described is None:
                    status[name] = None
                    continue
                workers = [w for entry in described for w in entry.get("workers", [])]
                status[name] = sum(1 for w in workers if w.get("status") == "READY")
            return status
        except (OSError, urllib.error.URLError, ValueError):
            return None  # not listening yet, or answering garbage while it starts

    def _registered_models(self) -> list[str]:
        return registered_models(
            self.urls.management, self._key_file_if_auth(), tls_cert=self.settings.tls_cert
        )

    def _get_json(self, path: str) -> Any:
        """GET from the management API (parsed JSON, whatever its shape); None on 404."""
        return management_get(
            self.urls.management, path, self._key_file_if_auth(), tls_cert=self.settings.tls_cert
        )

    def _key_file_if_auth(self) -> Path | None:
        return self.key_file if self.settings.auth_enabled else None

    # --- stop -----------------------------------------------------------------------------------

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the whole process group, wait for Java to exit, SIGKILL what is left. Idempotent."""
        if self._pgid is None or self._stopped:
            return
        proc = self._proc
        terminate_group(self._pgid, timeout_s, reap=proc.poll if proc else None)
        self._stopped = True
        atexit.unregister(self.stop)
        # TorchServe's own --stop deletes the key file too; the next start writes new keys.
        for leftover in (self.state_path, self.runtime_dir / TS_PID_FILE, self.key_file):
            leftover.unlink(missing_ok=True)
        log.info("stopped TorchServe (pid %s)", self._pgid)

    def __enter__(self) -> TorchServeProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- helpers ------------------------------------------------------------------------------------


def _describe_failure(failure: LoadFailure) -> str:
    who = f"Model {failure.model!r}" if failure.model else "A model"
    return f"{who} failed to load: {failure.message}"


def _tail(path: Path, lines: int) -> str:
    last = tail(path, lines)
    if last is None:
        return "(no output captured)"
    return "\n".join(last) or "(no output)"
