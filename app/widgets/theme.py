"""Look: Fusion style with a light or dark palette that follows the OS color scheme, and the app icon."""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QColor, QGuiApplication, QIcon, QPalette, QPixmap
from PySide6.QtWidgets import QApplication

from app.resources import ICON_FILE, ICON_PNG, resource_path

STYLE_SHEET = """
#questionBubble { background: palette(highlight); color: palette(highlighted-text); border-radius: 12px;
                  padding: 8px 12px; }
#answerCard { background: palette(base); border: 1px solid palette(mid); border-radius: 12px; }
#answerInfo, #libraryFooter, #progressDetail, #settingHelp { color: palette(placeholder-text); }
#settingsCost { border-left: 3px solid palette(highlight); padding: 4px 8px; }
#citationButton { text-align: left; padding: 4px 8px; border: none; border-radius: 6px; color: palette(link); }
#citationButton:hover, #citationButton:checked { background: palette(alternate-base); }
#citationText { background: palette(alternate-base); border-left: 3px solid palette(highlight);
                padding: 6px 8px; }
#errorBanner { background: #c62828; border-radius: 8px; }
#errorBanner QLabel { color: white; }
#errorBanner QPushButton { color: white; border: 1px solid rgba(255,255,255,0.6); border-radius: 4px;
                           padding: 2px 10px; background: transparent; }
#settingsError { color: #d32f2f; }
#runtimeBanner { background: palette(base); border: 1px solid palette(mid); border-left: 4px solid palette(highlight);
                 border-radius: 6px; }
#runtimeBanner[state="ready"] { border-left-color: #2e7d32; }
#runtimeBanner[state="failed"] { border-left-color: #e6a100; }
#runtimeHide { border: none; background: transparent; color: palette(placeholder-text); padding: 2px 6px; }
#runtimeHide:hover { color: palette(text); }
#progressPanel { border: 1px solid palette(mid); border-radius: 10px; background: palette(base); }
#welcomeTitle { font-size: 22pt; font-weight: 600; }
#welcomeText { font-size: 11pt; }
#dropHint { border: 2px dashed palette(mid); border-radius: 16px; padding: 24px; color: palette(placeholder-text);
            font-size: 12pt; }
#groundingNotice { background: rgba(230, 160, 0, 0.14); border-left: 3px solid #e6a100; border-radius: 4px; }
#groundingQuote { padding-left: 8px; }
#sourceView { background: palette(base); border: 1px solid palette(mid); border-radius: 10px; }
#sourceTitle { font-weight: 600; font-size: 11pt; }
#sourceClose { border: none; background: transparent; font-size: 14pt; color: palette(placeholder-text); }
#sourceClose:hover { color: palette(text); }
#sourceProblem { background: rgba(230, 160, 0, 0.16); border-left: 3px solid #e6a100; border-radius: 4px;
                 padding: 6px 8px; }
#sourcePageArea { background: #d5d8de; border: none; border-radius: 6px; }
#sourceCaption, #sourcePage, #sourceZoom { color: palette(placeholder-text); }
#dropOverlay { background: rgba(33, 150, 243, 0.18); border: 3px dashed #2196f3; border-radius: 18px;
               font-size: 18pt; color: #1976d2; }
"""


def is_dark() -> bool:
    hints = QGuiApplication.styleHints()
    scheme = getattr(hints, "colorScheme", None)
    if scheme is not None:
        value = scheme()
        if value == Qt.ColorScheme.Dark:
            return True
        if value == Qt.ColorScheme.Light:
            return False
    return QGuiApplication.palette().color(QPalette.ColorRole.Window).lightness() < 128


def dark_palette() -> QPalette:
    palette = QPalette()
    colors = {
        QPalette.ColorRole.Window: "#202124", QPalette.ColorRole.WindowText: "#e8eaed",
        QPalette.ColorRole.Base: "#292a2d", QPalette.ColorRole.AlternateBase: "#323336",
        QPalette.ColorRole.Text: "#e8eaed", QPalette.ColorRole.Button: "#303134",
        QPalette.ColorRole.ButtonText: "#e8eaed", QPalette.ColorRole.Highlight: "#3d6fb4",
        QPalette.ColorRole.HighlightedText: "#ffffff", QPalette.ColorRole.ToolTipBase: "#303134",
        QPalette.ColorRole.ToolTipText: "#e8eaed", QPalette.ColorRole.PlaceholderText: "#9aa0a6",
        QPalette.ColorRole.Link: "#8ab4f8", QPalette.ColorRole.Mid: "#5f6368",
        QPalette.ColorRole.BrightText: "#ffffff",
    }
    for role, color in colors.items():
        palette.setColor(role, QColor(color))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.WindowText, QPalette.ColorRole.ButtonText):
        palette.setColor(QPalette.ColorGroup.Disabled, role, QColor("#80868b"))
    return palette


def light_palette() -> QPalette:
    palette = QApplication.style().standardPalette()
    palette.setColor(QPalette.ColorRole.Highlight, QColor("#2f6fce"))
    palette.setColor(QPalette.ColorRole.HighlightedText, QColor("#ffffff"))
    palette.setColor(QPalette.ColorRole.AlternateBase, QColor("#f1f3f6"))
    palette.setColor(QPalette.ColorRole.Window, QColor("#f6f7f9"))
    return palette


def apply_theme(app: QApplication) -> None:
    """Fusion + a palette matching the OS scheme, re-applied when the OS switches light/dark."""
    app.setStyle("Fusion")
    dark = is_dark()

    def update(*_args) -> None:
        app.setPalette(dark_palette() if is_dark() else light_palette())
        app.setStyleSheet(STYLE_SHEET)

    app.setPalette(dark_palette() if dark else light_palette())
    app.setStyleSheet(STYLE_SHEET)
    hints = QGuiApplication.styleHints()
    if hasattr(hints, "colorSchemeChanged"):
        hints.colorSchemeChanged.connect(update)


def app_icon() -> QIcon:
    """The Folio icon from resources/ (SVG where Qt can render it, PNG otherwise)."""
    icon = QIcon()
    for name in (ICON_FILE, ICON_PNG):
        path = resource_path(name)
        if path.exists():
            pixmap = QPixmap(str(path))
            if not pixmap.isNull():
                icon.addFile(str(path), QSize(256, 256))
    return icon
