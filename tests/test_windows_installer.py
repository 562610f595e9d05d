"""The Windows installer script compiles with NSIS's makensis against a stub PyInstaller payload.

Needs makensis (Debian: apt-get install -y nsis); skipped without it. Running the installer needs
Windows and is left to .github/workflows/windows-installer.yml.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "packaging" / "windows" / "folio.nsi"
BUILD_SH = ROOT / "packaging" / "windows" / "build_installer.sh"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
MAKENSIS = shutil.which("makensis")

pytestmark = pytest.mark.skipif(
    MAKENSIS is None, reason="makensis (NSIS) is not installed; on Debian: apt-get install -y nsis")


def stub_payload(folder: Path) -> Path:
    """What PyInstaller's onedir build puts in dist/folio: the executable and _internal/."""
    (folder / "_internal" / "PySide6").mkdir(parents=True)
    (folder / "folio.exe").write_bytes(b"MZ" + b"\0" * 4094)
    (folder / "_internal" / "base_library.zip").write_bytes(b"PK\5\6" + b"\0" * 18)
    (folder / "_internal" / "PySide6" / "Qt6Core.dll").write_bytes(b"MZ" + b"\0" * 1022)
    return folder


def makensis(*defines: str) -> subprocess.CompletedProcess[str]:
    assert MAKENSIS is not None
    return subprocess.run([MAKENSIS, "-V2", "-WX", *(f"-D{d}" for d in defines), str(SCRIPT)],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def installer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("nsis")
    payload = stub_payload(tmp / "folio")
    out = tmp / "folio-setup.exe"
    done = makensis(f"VERSION={VERSION}", f"PAYLOAD={payload}", f"OUTFILE={out}", "COMPRESSOR=zlib")
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_installer_is_a_windows_executable_with_the_app_version(installer: Path) -> None:
    data = installer.read_bytes()
    # The NSIS stub alone is ~100 KB; its pages, plugins, icon and payload come on top.
    assert len(data) > 150_000
    assert data[:2] == b"MZ"
    (pe_offset,) = struct.unpack_from("<I", data, 0x3C)
    assert data[pe_offset:pe_offset + 4] == b"PE\0\0"
    # The version resource (VIAddVersionKey) carries pyproject's version, as UTF-16.
    assert f"Folio {VERSION} installer".encode("utf-16-le") in data


@pytest.mark.skipif(shutil.which("7z") is None, reason="7z (p7zip-full) is not installed to list the installer")
def test_installer_carries_the_payload_icon_and_uninstaller(installer: Path) -> None:
    listing = subprocess.run(["7z", "l", "-slt", str(installer)], capture_output=True, text=True,
                             check=True, timeout=60).stdout
    paths = {line.removeprefix("Path = ").replace("\\", "/") for line in listing.splitlines()
             if line.startswith("Path = ")}
    for expected in ("folio.exe", "_internal/base_library.zip", "_internal/PySide6/Qt6Core.dll",
                     "folio.ico", "uninstall.exe"):
        assert expected in paths, sorted(paths)


def test_missing_payload_stops_the_build_with_a_clear_message(tmp_path: Path) -> None:
    (tmp_path / "folio").mkdir()  # e.g. a Linux build: no folio.exe
    done = makensis(f"VERSION={VERSION}", f"PAYLOAD={tmp_path / 'folio'}", f"OUTFILE={tmp_path / 'x.exe'}")
    assert done.returncode != 0
    assert "No folio.exe in the payload folder" in done.stdout + done.stderr
    assert not (tmp_path / "x.exe").exists()


def test_missing_version_stops_the_build(tmp_path: Path) -> None:
    payload = stub_payload(tmp_path / "folio")
    done = makensis(f"PAYLOAD={payload}", f"OUTFILE={tmp_path / 'x.exe'}")
    assert done.returncode != 0
    assert "VERSION is not defined" in done.stdout + done.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="build_installer.sh needs bash")
def test_build_script_reads_the_version_and_reports_the_installer(tmp_path: Path) -> None:
    payload = stub_payload(tmp_path / "folio")
    out = tmp_path / "out" / "folio-test-setup.exe"  # NSIS warns on a bare "setup.exe"
    done = subprocess.run(["bash", str(BUILD_SH), str(payload), str(out)], capture_output=True, text=True,
                          timeout=120, env={"PATH": str(Path(MAKENSIS).parent) + ":/usr/bin:/bin",
                                            "COMPRESSOR": "zlib"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert out.is_file()
    assert done.stdout.splitlines()[0] == str(out)
    assert f"{out.stat().st_size} bytes" in done.stdout
    assert f"Folio {VERSION} (" in done.stderr
