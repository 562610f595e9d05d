"""First-run GPU runtime flow, offline: fake nvidia-smi outputs, a local wheel folder and a local HTTP server."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from app.runtime.activate import ACTIVE_ENV, activate_runtime, apply_runtime, restart_command
from app.runtime.builds import DEFAULT_INDEX_TEMPLATE, RuntimeBuild, candidate_builds, choose_build
from app.runtime.detect import GpuInfo, detect_nvidia
from app.runtime.download import download, read_sidecar
from app.runtime.errors import ChecksumError, DownloadCancelled, NoCudaBuild, WheelNotFound
from app.runtime.install import install_runtime
from app.runtime.layout import (
    DOWNLOADS_DIR,
    RUNTIME_DIR_ENV,
    SITE_DIR,
    STAMP_FILE,
    read_stamp,
    runtime_path,
    runtime_ready,
    write_stamp,
)
from app.runtime.messages import status_message
from app.runtime.requirements import runtime_requirements
from app.runtime.source import SOURCE_ENV, RuntimeSource, interpreter_tag

TORCH = "2.13.0"
WHEEL_NAME = f"torch-{TORCH}+cu126-{interpreter_tag()}-{interpreter_tag()}-linux_x86_64.whl"
CHUNK = 4096

SMI_QUERY_OUT = "NVIDIA GeForce RTX 4090, 550.54.14, 24564\n"
SMI_HEADER = """\
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 550.54.14              Driver Version: 550.54.14      CUDA Version: 12.4     |
|-----------------------------------------+------------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |
|   0  NVIDIA GeForce RTX 4090        Off |   00000000:01:00.0  On |                  Off |
+-----------------------------------------+------------------------+----------------------+
"""
OLD_QUERY_OUT = "Tesla K80, 470.57.02, 11441\n"
OLD_HEADER = "| NVIDIA-SMI 470.57.02    Driver Version: 470.57.02    CUDA Version: 11.4     |\n"


def fake_smi(query: str | None, header: str | None, code: int = 0):
    """A runner for detect_nvidia: answers the query and the plain header; None -> command not found."""

    def run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        out = query if len(argv) > 1 else header
        if out is None:
            raise FileNotFoundError(argv[0])
        return subprocess.CompletedProcess(list(argv), code, out, "")

    return run


CUBLAS = "12.6.4.1"
CUBLAS_WHEEL = f"nvidia_cublas_cu12-{CUBLAS}-py3-none-manylinux2014_x86_64.whl"
TORCH_REQUIRES = (
    f'nvidia-cublas-cu12=={CUBLAS}; platform_system == "Linux"',
    "sympy>=1.0",  # satisfied by the test environment: skipped
    'something-windows==1.0; platform_system == "Windows"',  # marker false here: skipped
    'opt-einsum>=3.3; extra == "opt-einsum"',  # an extra: skipped
)


def make_wheel(folder: Path, name: str = WHEEL_NAME, sidecar: bool = True, requires: Sequence[str] = ()) -> Path:
    """A small fake torch wheel (with ~64 KiB of incompressible padding so downloads take several chunks)."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / name
    metadata = f"Metadata-Version: 2.1\nName: torch\nVersion: {TORCH}+cu126\n"
    metadata += "".join(f"Requires-Dist: {line}\n" for line in requires)
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("torch/__init__.py", f'__version__ = "{TORCH}+cu126"\n')
        archive.writestr("torch/_pad.bin", os.urandom(64 * 1024), compress_type=zipfile.ZIP_STORED)
        archive.writestr(f"torch-{TORCH}+cu126.dist-info/METADATA", metadata + "\nlong description\n")
        archive.writestr(f"torch-{TORCH}+cu126.data/purelib/torchgen/__init__.py", "")
        archive.writestr(f"torch-{TORCH}+cu126.data/scripts/torchrun", "#!/bin/sh\n")
    if sidecar:
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        (folder / f"{name}.sha256").write_text(f"{digest}  {name}\n", encoding="utf-8")
    return wheel


def make_dep_wheel(folder: Path, name: str = CUBLAS_WHEEL, sidecar: bool = True) -> Path:
    """A fake nvidia-cublas-cu12 wheel (importable as ``nvidia.cublas``, with padding)."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / name
    version = name.split("-")[1]
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("nvidia/__init__.py", "")
        archive.writestr("nvidia/cublas/__init__.py", f'__version__ = "{version}"\n')
        archive.writestr("nvidia/cublas/lib/libcublas.so.12", os.urandom(48 * 1024), compress_type=zipfile.ZIP_STORED)
        archive.writestr(f"nvidia_cublas_cu12-{version}.dist-info/METADATA",
                         f"Metadata-Version: 2.1\nName: nvidia-cublas-cu12\nVersion: {version}\n")
    if sidecar:
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        (folder / f"{name}.sha256").write_text(f"{digest}  {name}\n", encoding="utf-8")
    return wheel


def build_cu126(index: str = DEFAULT_INDEX_TEMPLATE) -> RuntimeBuild:
    gpu = GpuInfo("NVIDIA GeForce RTX 4090", "560.35.03", 24564, "12.6")
    return choose_build(gpu, f"{TORCH}+cpu", index)


class Interrupt(Exception):
    pass


def interrupt_after(limit: int):
    """A progress callback that raises once ``limit`` bytes are done (a simulated crash / lost connection)."""
    seen: list[tuple[int, int | None]] = []

    def progress(done: int, total: int | None) -> None:
        seen.append((done, total))
        if done >= limit:
            raise Interrupt(done)

    progress.seen = seen  # type: ignore[attr-defined]
    return progress


def collect():
    seen: list[tuple[int, int | None]] = []

    def progress(done: int, total: int | None) -> None:
        seen.append((done, total))

    return progress, seen


# ------------------------------------------------------------------------------------------------ detection


def test_detect_gpu_present() -> None:
    gpu = detect_nvidia(fake_smi(SMI_QUERY_OUT, SMI_HEADER))
    assert gpu == GpuInfo("NVIDIA GeForce RTX 4090", "550.54.14", 24564, "12.4")


def test_detect_multi_gpu_takes_first_and_header_optional() -> None:
    gpu = detect_nvidia(fake_smi("NVIDIA A100-SXM4-80GB, 535.104.05, 81920\nTesla T4, 535.104.05, 15360\n", ""))
    assert gpu is not None and gpu.name == "NVIDIA A100-SXM4-80GB" and gpu.memory_mib == 81920
    assert gpu.cuda_version is None


@pytest.mark.parametrize("runner", [
    fake_smi(None, None),  # nvidia-smi not installed
    fake_smi("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n", "", code=9),
    fake_smi("", ""),
])
def test_detect_no_gpu(runner) -> None:
    assert detect_nvidia(runner) is None


def test_detect_timeout_is_no_gpu() -> None:
    def run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired(list(argv), 10)

    assert detect_nvidia(run) is None


def test_old_driver_stays_on_cpu_with_reason() -> None:
    gpu = detect_nvidia(fake_smi(OLD_QUERY_OUT, OLD_HEADER))
    assert gpu is not None and gpu.cuda_version == "11.4"
    with pytest.raises(NoCudaBuild, match=r"CUDA 11\.4.*11\.8 or newer") as info:
        choose_build(gpu, TORCH)
    message = status_message(gpu, ready=False, reason=str(info.value))
    assert message.startswith("NVIDIA Tesla K80 found, but its driver 470.57.02") and "running on the CPU" in message


# ---------------------------------------------------------------------------------------------- build choice


@pytest.mark.parametrize(("cuda", "driver", "tag"), [
    ("13.1", "590.44", "cu130"), ("12.9", "575.57", "cu129"), ("12.8", "570.86", "cu128"),
    ("12.6", "560.35", "cu126"), ("12.5", "555.42", "cu124"),
    ("12.4", "550.54", "cu124"), ("12.2", "535.104", "cu121"), ("12.0", "525.60", "cu118"),
    ("11.8", "520.61", "cu118"),
    (None, "580.95.05", "cu130"), (None, "560.35.03", "cu126"), (None, "550.54.14", "cu124"),
    (None, "535.104.05", "cu121"),
])
def test_choose_build(cuda: str | None, driver: str, tag: str) -> None:
    build = choose_build(GpuInfo("GPU", driver, 8192, cuda), "2.13.0+cpu")
    assert build.tag == tag
    assert build.torch_version == f"2.13.0+{tag}" and build.requirement == f"torch==2.13.0+{tag}"
    assert build.index_url == f"https://download.pytorch.org/whl/{tag}"
    assert build.wheel_glob == f"torch-2.13.0+{tag}-*.whl"


def test_candidate_builds_are_every_supported_build_newest_first() -> None:
    builds = candidate_builds(GpuInfo("GPU", "570.86", 8192, "12.8"), "2.13.0+cpu")
    assert [build.tag for build in builds] == ["cu128", "cu126", "cu124", "cu121", "cu118"]
    assert all(build.torch_version == f"2.13.0+{build.tag}" for build in builds)


def test_choose_build_unknown_driver() -> None:
    with pytest.raises(NoCudaBuild):
        choose_build(GpuInfo("GPU", "n/a", None, None), TORCH)
    with pytest.raises(NoCudaBuild):
        choose_build(GpuInfo("GPU", "470.57.02", None, None), TORCH)


def test_choose_build_custom_index() -> None:
    assert build_cu126("https://mirror.example/torch/{tag}").index_url == "https://mirror.example/torch/cu126"


# ------------------------------------------------------------------------------------------- local folder flow


def test_source_env_override(tmp_path: Path) -> None:
    build = build_cu126()
    assert RuntimeSource.for_build(build, {}) == RuntimeSource("index", build.index_url)
    assert RuntimeSource.for_build(build, {SOURCE_ENV: str(tmp_path)}) == RuntimeSource(
        "folder", str(tmp_path))
    assert RuntimeSource.for_build(build, {SOURCE_ENV: tmp_path.as_uri()}) == RuntimeSource(
        "folder", str(tmp_path))
    assert RuntimeSource.for_build(build, {SOURCE_ENV: "http://127.0.0.1:9/{tag}"}) == RuntimeSource(
        "index", "http://127.0.0.1:9/cu126")


def test_folder_source_picks_matching_wheel(tmp_path: Path) -> None:
    make_wheel(tmp_path, f"torch-{TORCH}+cu124-cp311-cp311-linux_x86_64.whl")
    wheel = make_wheel(tmp_path)
    ref = RuntimeSource("folder", str(tmp_path)).find_wheel(build_cu126())
    assert ref.name == WHEEL_NAME and Path(ref.location) == wheel
    assert ref.sha256 == hashlib.sha256(wheel.read_bytes()).hexdigest()
    with pytest.raises(WheelNotFound, match="cu126"):
        RuntimeSource("folder", str(tmp_path / "missing")).find_wheel(build_cu126())


def test_full_install_from_local_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheels = tmp_path / "wheels"
    make_wheel(wheels)
    monkeypatch.setenv(SOURCE_ENV, str(wheels))
    monkeypatch.setenv(RUNTIME_DIR_ENV, str(tmp_path / "runtime"))
    build = build_cu126()
    assert runtime_path(build) == tmp_path / "runtime" / "cu126"
    progress, seen = collect()

    path = install_runtime(build, progress=progress, chunk_size=CHUNK)

    assert path == tmp_path / "runtime" / "cu126"
    assert runtime_ready(path) and runtime_ready(path, build.torch_version)
    assert not runtime_ready(path, "2.13.0+cu124")
    stamp = read_stamp(path)
    assert stamp is not None and stamp["torch_version"] == "2.13.0+cu126" and stamp["tag"] == "cu126"
    assert stamp["sha256"] == hashlib.sha256((wheels / WHEEL_NAME).read_bytes()).hexdigest() and stamp["date"]
    site = path / SITE_DIR
    assert (site / "torch" / "__init__.py").is_file() and (site / "torchgen" / "__init__.py").is_file()
    assert not (site / f"torch-{TORCH}+cu126.data").exists()
    assert not list((path / DOWNLOADS_DIR).iterdir())  # wheel deleted after the unpack, no .part left
    total = (wheels / WHEEL_NAME).stat().st_size
    assert seen[-1] == (total, total) and len(seen) > 3

    activation = activate_runtime(path, {"PYTHONPATH": "/elsewhere"})
    assert activation.env["PYTHONPATH"] == os.pathsep.join([activation.sys_path_entry, "/elsewhere"])
    code = f"import sys; sys.path.insert(0, {activation.sys_path_entry!r}); import torch; print(torch.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "2.13.0+cu126"
    # The restart environment alone (PYTHONPATH) makes the child import the runtime's torch.
    env = {k: v for k, v in activation.env.items() if k != "PYTHONPATH"} | {"PYTHONPATH": activation.sys_path_entry}
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"], env=env,
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "2.13.0+cu126"

    # Ready: a second call does nothing (no source needed).
    monkeypatch.setenv(SOURCE_ENV, str(tmp_path / "nowhere"))
    assert install_runtime(build) == path


def test_interrupted_local_download_resumes(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "wheels")
    dest = tmp_path / "dest"
    total = wheel.stat().st_size
    crash = interrupt_after(3 * CHUNK)
    with pytest.raises(Interrupt):
        download(wheel, dest, crash, chunk_size=CHUNK)
    part = dest / f"{WHEEL_NAME}.part"
    assert part.stat().st_size == 3 * CHUNK and not (dest / WHEEL_NAME).exists()

    progress, seen = collect()
    final = download(wheel, dest, progress, chunk_size=CHUNK)
    assert seen[0] == (3 * CHUNK, total) and seen[-1] == (total, total)  # continued, not restarted
    assert final.read_bytes() == wheel.read_bytes() and not part.exists()


def test_half_written_part_resumes(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "wheels")
    dest = tmp_path / "dest"
    dest.mkdir()
    data = wheel.read_bytes()
    (dest / f"{WHEEL_NAME}.part").write_bytes(data[: len(data) // 2])
    final = download(wheel, dest, collect()[0], chunk_size=CHUNK)
    assert hashlib.sha256(final.read_bytes()).hexdigest() == read_sidecar(wheel)


def test_cancel_keeps_part(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "wheels")
    calls = iter(range(100))
    with pytest.raises(DownloadCancelled):
        download(wheel, tmp_path / "dest", collect()[0], cancel=lambda: next(calls) >= 2, chunk_size=CHUNK)
    assert (tmp_path / "dest" / f"{WHEEL_NAME}.part").stat().st_size == 2 * CHUNK


def test_corrupt_download_refused(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "wheels")
    (wheel.parent / f"{WHEEL_NAME}.sha256").write_text("0" * 64 + "\n", encoding="utf-8")
    dest = tmp_path / "dest"
    with pytest.raises(ChecksumError, match="corrupt.*removed"):
        download(wheel, dest, collect()[0], chunk_size=CHUNK)
    assert not list(dest.iterdir())


def test_corrupt_part_refused_on_resume(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "wheels")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / f"{WHEEL_NAME}.part").write_bytes(b"garbage" * 100)
    with pytest.raises(ChecksumError):
        download(wheel, dest, collect()[0], chunk_size=CHUNK)
    assert not (dest / f"{WHEEL_NAME}.part").exists()
    assert download(wheel, dest, collect()[0], chunk_size=CHUNK).read_bytes() == wheel.read_bytes()


def test_stamp_missing_is_not_ready_and_unpack_is_redone(tmp_path: Path) -> None:
    make_wheel(tmp_path / "wheels")
    source = RuntimeSource("folder", str(tmp_path / "wheels"))
    build = build_cu126()
    path = install_runtime(build, source, path=tmp_path / "rt", keep_wheel=True)
    assert runtime_ready(path)
    (path / STAMP_FILE).unlink()
    (path / SITE_DIR / "torch" / "__init__.py").unlink()  # an unpack interrupted before the stamp
    assert not runtime_ready(path)
    install_runtime(build, source, path=path)
    assert runtime_ready(path) and (path / SITE_DIR / "torch" / "__init__.py").is_file()
    (path / STAMP_FILE).write_text("{not json", encoding="utf-8")
    assert not runtime_ready(path)


def test_interrupted_install_resumes(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "wheels")
    source = RuntimeSource("folder", str(tmp_path / "wheels"))
    build = build_cu126()
    with pytest.raises(Interrupt):
        install_runtime(build, source, interrupt_after(2 * CHUNK), path=tmp_path / "rt", chunk_size=CHUNK)
    assert not runtime_ready(tmp_path / "rt")
    progress, seen = collect()
    install_runtime(build, source, progress, path=tmp_path / "rt", chunk_size=CHUNK)
    assert seen[0][0] == 2 * CHUNK and seen[-1][0] == wheel.stat().st_size
    assert runtime_ready(tmp_path / "rt", build.torch_version)


# ------------------------------------------------------------------------------------------------ dependencies


def test_runtime_requirements_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    kept = runtime_requirements([*TORCH_REQUIRES, "not a requirement !!", "triton==3.3.0"])
    assert [str(req) for req in kept] == [f"nvidia-cublas-cu12=={CUBLAS}; platform_system == \"Linux\"",
                                          "triton==3.3.0"]
    # nvidia-* and triton are fetched even when the main environment has them; others only when missing.
    monkeypatch.setattr("app.runtime.requirements._installed_version", lambda name: "99.0")
    names = [req.name for req in runtime_requirements(["nvidia-nccl-cu12==2.21.5", "triton", "filelock",
                                                          "networkx<3"])]
    assert names == ["nvidia-nccl-cu12", "triton", "networkx"]


def test_find_requirement_pins_and_prefers_fitting_tags(tmp_path: Path) -> None:
    make_dep_wheel(tmp_path, "nvidia_cublas_cu12-12.4.5.8-py3-none-manylinux2014_x86_64.whl")
    make_dep_wheel(tmp_path, "nvidia_cublas_cu12-12.6.4.1-py3-none-win_amd64.whl")
    make_dep_wheel(tmp_path)
    make_dep_wheel(tmp_path, "nvidia_cublas_cu12-12.8.3.14-py3-none-manylinux2014_x86_64.whl")
    source = RuntimeSource("folder", str(tmp_path))
    from packaging.requirements import Requirement

    assert source.find_requirement(Requirement(f"nvidia-cublas-cu12=={CUBLAS}")).name == CUBLAS_WHEEL
    assert source.find_requirement(Requirement("nvidia_cublas_cu12")).name.startswith("nvidia_cublas_cu12-12.8.3.14")
    assert source.find_requirement(Requirement("nvidia-cublas-cu12<12.5")).name.startswith(
        "nvidia_cublas_cu12-12.4.5.8")


def test_install_fetches_cuda_dependencies(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    torch_wheel = make_wheel(wheels, requires=TORCH_REQUIRES)
    dep = make_dep_wheel(wheels)
    make_dep_wheel(wheels, "nvidia_cublas_cu12-12.4.5.8-py3-none-manylinux2014_x86_64.whl")  # not the pin
    build = build_cu126()
    progress, seen = collect()

    path = install_runtime(build, RuntimeSource("folder", str(wheels)), progress, path=tmp_path / "rt",
                              chunk_size=CHUNK)

    assert runtime_ready(path, build.torch_version)
    stamp = read_stamp(path)
    assert stamp is not None and stamp["dependencies"] == [CUBLAS_WHEEL] and stamp["wheel"] == WHEEL_NAME
    site = path / SITE_DIR
    assert (site / "torch" / "__init__.py").is_file() and (site / "nvidia" / "cublas" / "lib").is_dir()
    assert (site / f"nvidia_cublas_cu12-{CUBLAS}.dist-info" / "METADATA").is_file()
    assert not list(site.glob("sympy*")) and not list(site.glob("something*"))
    assert not list((path / DOWNLOADS_DIR).iterdir())
    total = torch_wheel.stat().st_size + dep.stat().st_size
    assert seen[-1] == (total, total)
    assert all(done <= total for done, _ in seen) and [done for done, _ in seen] == sorted(done for done, _ in seen)
    code = (f"import sys; sys.path.insert(0, {str(site)!r}); import torch, nvidia.cublas; "
            "print(torch.__version__, nvidia.cublas.__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["2.13.0+cu126", CUBLAS]


def test_missing_dependency_wheel(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    make_wheel(wheels, requires=TORCH_REQUIRES)
    make_dep_wheel(wheels, "nvidia_cublas_cu12-12.4.5.8-py3-none-manylinux2014_x86_64.whl")  # wrong version only
    with pytest.raises(WheelNotFound, match=f"nvidia-cublas-cu12=={CUBLAS}"):
        install_runtime(build_cu126(), RuntimeSource("folder", str(wheels)), path=tmp_path / "rt")
    assert not runtime_ready(tmp_path / "rt") and read_stamp(tmp_path / "rt") is None


def test_interrupted_dependency_download_resumes(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    torch_size = make_wheel(wheels, requires=TORCH_REQUIRES).stat().st_size
    dep = make_dep_wheel(wheels)
    source = RuntimeSource("folder", str(wheels))
    build = build_cu126()
    path = tmp_path / "rt"
    with pytest.raises(Interrupt):
        install_runtime(build, source, interrupt_after(torch_size + 3 * CHUNK), path=path, chunk_size=CHUNK)
    assert (path / DOWNLOADS_DIR / WHEEL_NAME).is_file()  # torch finished and kept
    assert (path / DOWNLOADS_DIR / f"{CUBLAS_WHEEL}.part").stat().st_size == 3 * CHUNK
    assert not runtime_ready(path)

    progress, seen = collect()
    install_runtime(build, source, progress, path=path, chunk_size=CHUNK)
    total = torch_size + dep.stat().st_size
    assert seen[0] == (torch_size + 3 * CHUNK, total) and seen[-1] == (total, total)  # continued, not restarted
    assert runtime_ready(path, build.torch_version)
    assert (path / SITE_DIR / "nvidia" / "cublas" / "__init__.py").is_file()


# --------------------------------------------------------------------------------------------------- HTTP flow


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves files from ``root`` with single-range ``Range: bytes=N-`` support, and a simple index page."""

    root: Path
    honour_range = True
    requests: list[str | None]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.requests.append(self.headers.get("Range"))
        if self.path.endswith("/"):
            self._send_index(self.path.rstrip("/").rsplit("/", 1)[-1])
            return
        file = self.root / self.path.lstrip("/").split("?")[0].replace("%2B", "+")
        if not file.is_file():
            self.send_error(404)
            return
        data = file.read_bytes()
        start = 0
        header = self.headers.get("Range")
        if header and self.honour_range:
            start = int(header.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def do_HEAD(self) -> None:
        file = self.root / self.path.lstrip("/").split("?")[0].replace("%2B", "+")
        if not file.is_file():
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(file.stat().st_size))
        self.end_headers()

    def _send_index(self, project: str) -> None:
        links = []
        for wheel in sorted(self.root.glob("*.whl")):
            if canonicalize_name(wheel.name.split("-")[0]) != project:
                continue
            digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
            links.append(f'<a href="/{wheel.name.replace("+", "%2B")}#sha256={digest}">{wheel.name}</a><br/>')
        body = ("<!DOCTYPE html><html><body>" + "\n".join(links) + "</body></html>").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, type[RangeHandler]]]:
    root = tmp_path / "served"
    make_wheel(root, sidecar=False)
    make_wheel(root, f"torch-{TORCH}+cu126-cp39-cp39-win_amd64.whl", sidecar=False)
    handler = type("Handler", (RangeHandler,), {"root": root, "requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_http_index_install_with_resume(tmp_path: Path, server: tuple[str, type[RangeHandler]],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    base, handler = server
    monkeypatch.setenv(SOURCE_ENV, base + "/whl/{tag}")
    build = build_cu126()
    source = RuntimeSource.for_build(build)
    ref = source.find_wheel(build)
    assert ref.name == WHEEL_NAME and ref.sha256 == hashlib.sha256((handler.root / WHEEL_NAME).read_bytes()).hexdigest()

    path = tmp_path / "rt"
    with pytest.raises(Interrupt):
        install_runtime(build, source, interrupt_after(5 * CHUNK), path=path, chunk_size=CHUNK)
    assert (path / DOWNLOADS_DIR / f"{WHEEL_NAME}.part").stat().st_size == 5 * CHUNK
    progress, seen = collect()
    install_runtime(build, source, progress, path=path, chunk_size=CHUNK)
    total = (handler.root / WHEEL_NAME).stat().st_size
    assert seen[0] == (5 * CHUNK, total) and seen[-1] == (total, total)
    assert f"bytes={5 * CHUNK}-" in handler.requests  # then it looks up the optional quantization wheel
    assert runtime_ready(path, build.torch_version)
    assert read_stamp(path)["sha256"] == ref.sha256  # type: ignore[index]
    assert (path / SITE_DIR / "torch" / "__init__.py").read_text().strip() == '__version__ = "2.13.0+cu126"'


def test_http_server_without_range_restarts(tmp_path: Path, server: tuple[str, type[RangeHandler]]) -> None:
    base, handler = server
    handler.honour_range = False
    url = f"{base}/{WHEEL_NAME.replace('+', '%2B')}"
    data = (handler.root / WHEEL_NAME).read_bytes()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / f"{WHEEL_NAME}.part").write_bytes(b"x" * 1000)  # would be corrupt if appended to
    sha = hashlib.sha256(data).hexdigest()
    final = download(url + f"#sha256={sha}", dest, collect()[0], chunk_size=CHUNK)
    assert final.name == WHEEL_NAME and final.read_bytes() == data


def test_http_corrupt_download_refused(tmp_path: Path, server: tuple[str, type[RangeHandler]]) -> None:
    base, _handler = server
    url = f"{base}/{WHEEL_NAME.replace('+', '%2B')}#sha256={'a' * 64}"
    with pytest.raises(ChecksumError):
        download(url, tmp_path / "dest", collect()[0], chunk_size=CHUNK)
    assert not list((tmp_path / "dest").iterdir())


def test_http_index_fetches_dependencies(tmp_path: Path, server: tuple[str, type[RangeHandler]]) -> None:
    base, handler = server
    torch_size = make_wheel(handler.root, requires=TORCH_REQUIRES, sidecar=False).stat().st_size
    dep = make_dep_wheel(handler.root, sidecar=False)
    make_dep_wheel(handler.root, "nvidia_cublas_cu12-12.6.4.1-py3-none-win_amd64.whl", sidecar=False)
    source = RuntimeSource("index", f"{base}/whl/cu126")
    path = tmp_path / "rt"
    build = build_cu126()
    with pytest.raises(Interrupt):
        install_runtime(build, source, interrupt_after(torch_size + 2 * CHUNK), path=path, chunk_size=CHUNK)
    progress, seen = collect()
    install_runtime(build, source, progress, path=path, chunk_size=CHUNK)
    total = torch_size + dep.stat().st_size
    assert seen[0] == (torch_size + 2 * CHUNK, total) and seen[-1] == (total, total)
    assert handler.requests[-1] == f"bytes={2 * CHUNK}-"
    assert read_stamp(path)["dependencies"] == [CUBLAS_WHEEL]  # type: ignore[index]
    assert (path / SITE_DIR / "nvidia" / "cublas" / "__init__.py").is_file()
    (handler.root / CUBLAS_WHEEL).unlink()
    with pytest.raises(WheelNotFound, match="nvidia-cublas-cu12"):
        install_runtime(build, source, path=tmp_path / "rt2")


def test_http_missing_wheel(server: tuple[str, type[RangeHandler]]) -> None:
    base, _handler = server
    build = choose_build(GpuInfo("GPU", "550.54", None, "12.4"), TORCH)  # cu124: not served
    with pytest.raises(WheelNotFound, match="2.13.0\\+cu124"):
        RuntimeSource("index", f"{base}/whl/cu124").find_wheel(build)


# ---------------------------------------------------------------------------------------------- restart/status


def test_restart_command_and_apply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    argv, env = restart_command(tmp_path, {"HOME": "/home/u"})
    assert argv[0] == sys.executable and argv[1:] == sys.orig_argv[1:]
    assert env["PYTHONPATH"] == str(tmp_path.resolve() / SITE_DIR) == env[ACTIVE_ENV] and env["HOME"] == "/home/u"
    assert not apply_runtime(tmp_path)  # not ready (and torch is already imported in this test process)


def test_status_messages() -> None:
    gpu = GpuInfo("NVIDIA GeForce RTX 4090", "560.35.03", 24564, "12.6")
    build = build_cu126()
    assert status_message(None, False) == "No NVIDIA GPU found — running on the CPU."
    assert status_message(gpu, False, build=build) == (
        "NVIDIA GeForce RTX 4090 found — downloading the GPU runtime (2.3 GiB) in the background; "
        "running on the CPU until it is ready.")
    assert status_message(gpu, True, build=build) == "GPU runtime ready (torch 2.13.0+cu126)."
    assert status_message(GpuInfo("Tesla T4", "1", None), False).startswith("NVIDIA Tesla T4 found")


def test_modules_import_no_qt_or_torch() -> None:
    """What app.runtime.startup may use before torch is imported (the worker's thread uses them too)."""
    code = ("import importlib, sys; "
            "[importlib.import_module(f'app.runtime.{name}') for name in "
            "('activate', 'builds', 'detect', 'download', 'errors', 'install', 'layout', 'requirements', 'source', "
            "'startup')]; "
            "print(any(m.split('.')[0] in ('torch', 'PySide6', 'engine') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"


def test_stamp_written_atomically(tmp_path: Path) -> None:
    (tmp_path / SITE_DIR).mkdir()
    write_stamp(tmp_path, build_cu126(), WHEEL_NAME, "ab" * 32)
    assert json.loads((tmp_path / STAMP_FILE).read_text())["wheel"] == WHEEL_NAME
    assert not (tmp_path / (STAMP_FILE + ".tmp")).exists() and runtime_ready(tmp_path)


def test_install_adds_the_quantization_library_when_the_source_has_it(tmp_path: Path) -> None:
    from app.runtime.requirements import OPTIONAL_REQUIREMENTS
    from engine.quantize import QUANT_REQUIREMENT

    assert OPTIONAL_REQUIREMENTS == (QUANT_REQUIREMENT,)  # the wheel the runtime fetches is the one the engine uses
    wheels = tmp_path / "wheels"
    make_wheel(wheels, requires=TORCH_REQUIRES)
    make_dep_wheel(wheels)
    version = QUANT_REQUIREMENT.split("==")[1]
    name = f"bitsandbytes-{version}-py3-none-manylinux_2_24_x86_64.whl"
    with zipfile.ZipFile(wheels / name, "w") as archive:
        archive.writestr("bitsandbytes/__init__.py", f'__version__ = "{version}"\n')
        archive.writestr(f"bitsandbytes-{version}.dist-info/METADATA",
                         f"Metadata-Version: 2.1\nName: bitsandbytes\nVersion: {version}\n")
    path = install_runtime(build_cu126(), RuntimeSource("folder", str(wheels)), path=tmp_path / "rt")
    assert read_stamp(path)["dependencies"] == [CUBLAS_WHEEL, name]
    assert (path / SITE_DIR / "bitsandbytes" / "__init__.py").is_file()
    (wheels / name).unlink()  # a source without it: the runtime works with full weights only
    path = install_runtime(build_cu126(), RuntimeSource("folder", str(wheels)), path=tmp_path / "rt2")
    assert runtime_ready(path) and read_stamp(path)["dependencies"] == [CUBLAS_WHEEL]
