"""`python -m app`: the Folio desktop window with the default model (or the settings' model)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description="Folio desktop app.")
    parser.add_argument("documents", nargs="*", help="documents to open at start")
    parser.add_argument("--model", help="use this model for this run ('default', a folder or a hub id)")
    parser.add_argument("--fake-engine", action="store_true", help="a fake engine (UI demos, no model)")
    parser.add_argument("--version", action="store_true", help="print Folio's version and exit")
    parser.add_argument("--self-test", action="store_true",
                        help="answer a question about the bundled sample offscreen with the default model, "
                             "print the timings and exit (0 = passed)")
    return parser


def missing_display() -> str | None:
    """On Linux, a message when Qt would find no screen to open a window on (instead of aborting)."""
    if not sys.platform.startswith("linux") or os.environ.get("QT_QPA_PLATFORM"):
        return None
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    return ("Folio needs a screen to open its window, and none was found (DISPLAY and WAYLAND_DISPLAY are "
            "unset). Run it from a desktop session, or use the command line: "
            "bash packaging/dev.sh cli (python -m engine ask DOCUMENT \"QUESTION\").")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.version:
        from app.version import app_version

        print(f"Folio {app_version()}")
        return 0
    from app.frozen import configure_frozen_environment

    configure_frozen_environment()
    from app.runtime.startup import use_ready_runtime

    runtime = use_ready_runtime()  # before anything imports torch: a downloaded CUDA build goes first
    if args.self_test:
        from app.sample.self_test import run_self_test

        return run_self_test(runtime)
    if problem := missing_display():
        print(f"error: {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from PySide6.QtWidgets import QApplication

    from app.resources import APP_NAME
    from app.settings import SETTINGS_FILE, config_dir, load_settings
    from app.widgets.theme import app_icon, apply_theme

    app = QApplication(sys.argv[:1])
    app.setApplicationName(APP_NAME)
    app.setApplicationDisplayName(APP_NAME)
    app.setDesktopFileName("folio")
    app.setWindowIcon(app_icon())
    apply_theme(app)
    first_run = not (config_dir() / SETTINGS_FILE).exists()
    settings, warning = load_settings()
    if args.model:
        settings = settings.with_changes(model=args.model)
    if args.fake_engine:
        from app.fake_backend import FakeBackend

        backend = FakeBackend(step_s=0.03)
    else:
        from app.backend import RealBackend

        backend = RealBackend()
    from app.main_window import MainWindow

    window = MainWindow(backend, settings, first_run=first_run)
    if warning:
        window.error_banner.show_message(warning)

    def show_unexpected(kind, value, trace) -> None:  # GUI-thread bugs: a message, never a traceback dialog
        logging.getLogger("folio.app").error("".join(traceback.format_exception(kind, value, trace)))
        window.error_banner.show_message(f"Something went wrong ({kind.__name__}: {value}). Folio keeps working.")

    sys.excepthook = show_unexpected
    window.show()
    window.open_files(args.documents)
    code = app.exec()
    # End here, without the interpreter's teardown: it takes seconds (garbage-collecting the model's objects, joining
    # an index build the window did not wait for), and what is worth keeping is saved: chats after each answer,
    # settings atomically, and the library survives a process that ends mid-write.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
