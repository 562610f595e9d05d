"""Dev tool: `python -m app.sample.screenshot OUT.png [--fake-engine] [--follow-up QUESTION]... [--size WxH,...]
[--pdf] [--source]` opens the sample document in the real window (with --pdf: the sample typeset as a PDF), asks the
sample question (then each follow-up in the same chat), waits for the answers and their citations, expands the last
answer's first citation (unless --collapsed; with --source it opens on its page in the source viewer), and saves a PNG
at each size (several sizes: OUT holds {width}, e.g. folio-window-{width}.png)."""

from __future__ import annotations

import argparse
import sys
import tempfile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.sample.screenshot")
    parser.add_argument("output")
    parser.add_argument("--fake-engine", action="store_true")
    parser.add_argument("--attention", default="retrieval", help="attention mode (both give citations)")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--follow-up", action="append", default=[], help="a follow-up question (repeatable)")
    parser.add_argument("--size", default="1360x860", help="window size, WIDTHxHEIGHT, or several: 1400x900,800x640")
    parser.add_argument("--collapsed", action="store_true", help="leave the citations folded")
    parser.add_argument("--pdf", action="store_true", help="open the sample typeset as a PDF")
    parser.add_argument("--source", action="store_true", help="open the first citation on its page, beside the chat")
    args = parser.parse_args(argv)
    sizes = [tuple(int(n) for n in size.split("x")) for size in args.size.split(",")]
    if len(sizes) > 1 and "{width}" not in args.output:
        parser.error("several sizes need {width} in the output name")

    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from app.main_window import MainWindow
    from app.sample.run import SampleRun, SampleRunResult
    from app.settings import AppSettings
    from app.widgets.chat_view import CitationItem
    from app.widgets.theme import app_icon, apply_theme

    app = QApplication(sys.argv[:1])
    app.setApplicationName("Folio")
    app.setWindowIcon(app_icon())
    apply_theme(app)
    if args.fake_engine:
        from app.fake_backend import FakeBackend

        backend = FakeBackend(step_s=0.01)
    else:
        from app.backend import RealBackend

        backend = RealBackend()
    folder = tempfile.mkdtemp(prefix="folio-screenshot-")
    settings = AppSettings().with_changes(attention=args.attention, max_new_tokens=80, folder=folder,
                                          gpu_runtime_auto_download=False)
    document = None
    if args.pdf:
        from pathlib import Path

        from app.sample.sample_pdf import write_sample_pdf

        document = write_sample_pdf(Path(folder) / "The Lighthouse at Varnholm.pdf")
    window = MainWindow(backend, settings, settings_path=None)
    window.resize(*sizes[0])
    window.show()

    follow_ups = list(args.follow_up)

    def answered(result: SampleRunResult) -> None:
        if result.error:
            print(result.error, file=sys.stderr)
            app.exit(1)
            return
        ask_next()

    def ask_next() -> None:
        if window.error_banner.message:
            print(window.error_banner.message, file=sys.stderr)
            app.exit(1)
            return
        if window.controller.busy or not window.chat_view.last_card.done:
            QTimer.singleShot(200, ask_next)
            return
        if follow_ups:
            window.prompt.setPlainText(follow_ups.pop(0))
            window.send()
            QTimer.singleShot(500, ask_next)
            return
        items = window.chat_view.last_card.findChildren(CitationItem)
        if items and (args.source or not args.collapsed):
            items[0].button.setChecked(True)  # with --source this opens the source viewer too
        if args.source and not window.source_view.isVisible():
            print("the answer has no citation to open", file=sys.stderr)
            app.exit(1)
            return
        QTimer.singleShot(800, shoot)

    def shoot() -> None:
        chat = window.chat_view
        chat.verticalScrollBar().setValue(chat.verticalScrollBar().maximum())
        app.processEvents()
        width, _height = sizes.pop(0)
        output = args.output.format(width=width)
        ok = window.grab().save(output)
        print("saved" if ok else "failed", output, file=sys.stderr)
        if not ok or not sizes:
            app.exit(0 if ok else 1)
            return
        window.resize(*sizes[0])
        QTimer.singleShot(800, shoot)  # the layout settles at the new size

    run = SampleRun(window, answered, timeout_s=args.timeout, document=document)
    run.start()
    code = app.exec()
    window.close()  # stops the engine thread
    return code


if __name__ == "__main__":
    sys.exit(main())
