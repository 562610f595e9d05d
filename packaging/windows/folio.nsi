; Folio for Windows: NSIS 3 (Modern UI 2) installer around the PyInstaller onedir build.
;
; Per-user only: no administrator rights, installs to %LOCALAPPDATA%\Programs\Folio, writes only to
; HKEY_CURRENT_USER (Start menu shortcut, optional desktop shortcut, "Open with" entries for .pdf, .txt
; and .md, the Apps & features entry). An all-users (per-machine) install is not offered.
;
; Build (from any directory; relative paths are relative to this script's folder):
;   makensis -DVERSION=0.1.0 -DPAYLOAD=..\..\dist\folio -DOUTFILE=..\..\dist\folio-0.1.0-setup.exe folio.nsi
; or on Linux: bash packaging/windows/build_installer.sh
;
; Defines:
;   VERSION     required; the app version (pyproject.toml [project] version)
;   PAYLOAD     folder of the PyInstaller build holding ${EXE} and _internal\   (default ..\..\dist\folio)
;   OUTFILE     installer to write              (default ..\..\dist\folio-${VERSION}-windows-x64-setup.exe)
;   VI_VERSION  numeric X.X.X.X for the file's version resource           (default ${VERSION}.0)
;   ICON        .ico for the installer, shortcuts and Apps & features     (default ..\..\resources\folio.ico)
;   EXE         the app's executable inside PAYLOAD                        (default folio.exe)
;   COMPRESSOR  lzma (default, solid) or zlib/bzip2 (faster to build, larger)

!if ${NSIS_PACKEDVERSION} < 0x03006000
  !error "NSIS 3.06 or later is needed (DeleteRegKey /ifnosubkeys /ifnovalues, WriteRegNone)"
!endif

Unicode true
ManifestDPIAware true
ManifestSupportedOS all

;--------------------------------------------------------------------------------------------------
; Build-time inputs and their checks

!ifndef VERSION
  !error "VERSION is not defined: pass the app version, e.g. makensis -DVERSION=0.1.0 folio.nsi (build_installer.sh reads it from pyproject.toml)"
!endif
!ifndef PAYLOAD
  !define PAYLOAD "..\..\dist\folio"
!endif
!ifndef EXE
  !define EXE "folio.exe"
!endif
!ifndef OUTFILE
  !define OUTFILE "..\..\dist\folio-${VERSION}-windows-x64-setup.exe"
!endif
!ifndef VI_VERSION
  !define VI_VERSION "${VERSION}.0"
!endif
!ifndef ICON
  !define ICON "..\..\resources\folio.ico"
!endif
!ifndef COMPRESSOR
  !define COMPRESSOR "lzma"
!endif

!if /FileExists "${PAYLOAD}\${EXE}"
!else
  !error "No ${EXE} in the payload folder '${PAYLOAD}': build the app first (pyinstaller --noconfirm --distpath dist --workpath build/pyinstaller packaging/folio.spec) or pass -DPAYLOAD=<folder holding ${EXE} and _internal>"
!endif
!if /FileExists "${PAYLOAD}\_internal\*.*"
!else
  !error "No _internal folder in the payload folder '${PAYLOAD}': expected a PyInstaller onedir build (dist\folio\${EXE} + dist\folio\_internal\)"
!endif
!if /FileExists "${ICON}"
!else
  !error "Icon '${ICON}' not found (resources\folio.ico is committed; regenerate it with python packaging/windows/make_icon.py)"
!endif

!define APP_NAME "Folio"
!ifndef PUBLISHER
  !define PUBLISHER "Folio"
!endif
!define PROGID "Folio.Document"
!define UNINST_KEY "Software\Microsoft\Windows\CurrentVersion\Uninstall\Folio"
!define CLASSES "Software\Classes"
; platformdirs (appauthor=False) on Windows: data, config and the Cache subfolder all live here.
!define DATA_DIR "$LOCALAPPDATA\folio"

;--------------------------------------------------------------------------------------------------
; General

Name "${APP_NAME}"
OutFile "${OUTFILE}"
RequestExecutionLevel user
InstallDir "$LOCALAPPDATA\Programs\Folio"
; An earlier install's folder is the default for an upgrade.
InstallDirRegKey HKCU "${UNINST_KEY}" "InstallLocation"
BrandingText "${APP_NAME} ${VERSION}"
ShowInstDetails show
ShowUninstDetails show

!if "${COMPRESSOR}" == "lzma"
  SetCompressor /SOLID lzma
  ; A larger dictionary pays off on the torch/Qt libraries in _internal (several hundred MB).
  SetCompressorDictSize 64
!else
  SetCompressor ${COMPRESSOR}
!endif

VIProductVersion "${VI_VERSION}"
VIAddVersionKey "ProductName" "${APP_NAME}"
VIAddVersionKey "ProductVersion" "${VERSION}"
VIAddVersionKey "FileVersion" "${VERSION}"
VIAddVersionKey "FileDescription" "${APP_NAME} ${VERSION} installer"
VIAddVersionKey "CompanyName" "${PUBLISHER}"
VIAddVersionKey "LegalCopyright" "Apache-2.0"

!include "MUI2.nsh"
!include "LogicLib.nsh"
!include "FileFunc.nsh"
!include "x64.nsh"
!include "WinVer.nsh"

;--------------------------------------------------------------------------------------------------
; Pages

!define MUI_ICON "${ICON}"
!define MUI_UNICON "${ICON}"
!define MUI_ABORTWARNING
!define MUI_COMPONENTSPAGE_NODESC

!define MUI_WELCOMEPAGE_TEXT "This will install ${APP_NAME} ${VERSION} for your user account only; no administrator rights are needed.$\r$\n$\r$\nFolio asks questions of whole long documents with a local language model. Your documents never leave this computer.$\r$\n$\r$\nClose Folio if it is running, then click Next."
!insertmacro MUI_PAGE_WELCOME
!insertmacro MUI_PAGE_COMPONENTS
!define MUI_PAGE_CUSTOMFUNCTION_LEAVE DirectoryLeave
!insertmacro MUI_PAGE_DIRECTORY
!insertmacro MUI_PAGE_INSTFILES
!define MUI_FINISHPAGE_RUN "$INSTDIR\${EXE}"
!define MUI_FINISHPAGE_RUN_TEXT "Start ${APP_NAME}"
!insertmacro MUI_PAGE_FINISH

!insertmacro MUI_UNPAGE_CONFIRM
!insertmacro MUI_UNPAGE_INSTFILES

!insertmacro MUI_LANGUAGE "English"

;--------------------------------------------------------------------------------------------------
; Helpers shared by installer and uninstaller (macros, so they expand in both)

; A running folio.exe keeps its files locked: ask to close it (silent mode: give up).
!macro ENSURE_NOT_RUNNING DIR
  ${If} ${FileExists} "${DIR}\${EXE}"
    ${Do}
      ClearErrors
      FileOpen $0 "${DIR}\${EXE}" a
      ${IfNot} ${Errors}
        FileClose $0
        ${Break}
      ${EndIf}
      ${If} ${Cmd} `MessageBox MB_RETRYCANCEL|MB_ICONEXCLAMATION "${APP_NAME} is running from ${DIR}.$\r$\nClose it, then click Retry." /SD IDCANCEL IDCANCEL`
        DetailPrint "${APP_NAME} is running from ${DIR}; stopped."
        Abort "${APP_NAME} is running; close it and try again."
      ${EndIf}
    ${Loop}
  ${EndIf}
!macroend

; "Open with" entry for one extension; the extension's default handler is left alone.
!macro ASSOCIATE EXT
  WriteRegNone HKCU "${CLASSES}\${EXT}\OpenWithProgids" "${PROGID}"
  WriteRegStr HKCU "${CLASSES}\Applications\${EXE}\SupportedTypes" "${EXT}" ""
!macroend

; Removes only Folio's value; the extension's keys go only when nothing else is left in them.
!macro UNASSOCIATE EXT
  DeleteRegValue HKCU "${CLASSES}\${EXT}\OpenWithProgids" "${PROGID}"
  DeleteRegKey /ifnosubkeys /ifnovalues HKCU "${CLASSES}\${EXT}\OpenWithProgids"
  DeleteRegKey /ifnosubkeys /ifnovalues HKCU "${CLASSES}\${EXT}"
!macroend

!macro REFRESH_SHELL_ASSOCIATIONS
  ; SHChangeNotify(SHCNE_ASSOCCHANGED, SHCNF_IDLIST, NULL, NULL): Explorer re-reads file associations.
  System::Call 'shell32::SHChangeNotify(i 0x08000000, i 0, p 0, p 0)'
!macroend

; $R9 = "" when $INSTDIR may be used: missing, empty, or an earlier Folio install. The uninstaller
; removes the whole folder, so a folder holding anything else is refused.
Function CheckInstDir
  StrCpy $R9 ""
  ${If} ${FileExists} "$INSTDIR\*.*"
  ${AndIfNot} ${FileExists} "$INSTDIR\${EXE}"
  ${AndIfNot} ${FileExists} "$INSTDIR\uninstall.exe"
    FindFirst $0 $1 "$INSTDIR\*.*"
    ${DoWhile} $1 != ""
      ${If} $1 != "."
      ${AndIf} $1 != ".."
        StrCpy $R9 "The folder $INSTDIR is not empty.$\r$\nChoose an empty or new folder: uninstalling ${APP_NAME} removes its whole folder."
        ${Break}
      ${EndIf}
      FindNext $0 $1
    ${Loop}
    FindClose $0
  ${EndIf}
FunctionEnd

Function DirectoryLeave
  Call CheckInstDir
  ${If} $R9 != ""
    MessageBox MB_OK|MB_ICONEXCLAMATION "$R9"
    Abort ; stay on the directory page
  ${EndIf}
FunctionEnd

Function .onInit
  SetShellVarContext current
  ${IfNot} ${RunningX64}
    MessageBox MB_OK|MB_ICONSTOP "${APP_NAME} needs 64-bit Windows 10 or later." /SD IDOK
    Abort
  ${EndIf}
  ${IfNot} ${AtLeastWin10}
    MessageBox MB_OK|MB_ICONSTOP "${APP_NAME} needs Windows 10 or later." /SD IDOK
    Abort
  ${EndIf}
FunctionEnd

;--------------------------------------------------------------------------------------------------
; Install

Section "${APP_NAME} (required)" SecApp
  SectionIn RO

  ; Silent installs skip the directory page, so check the folder here too.
  Call CheckInstDir
  ${If} $R9 != ""
    MessageBox MB_OK|MB_ICONEXCLAMATION "$R9" /SD IDOK
    DetailPrint "$R9"
    Abort "$R9"
  ${EndIf}

  ; Upgrade: remove the earlier install's files first (its uninstaller, silent: settings and data stay),
  ; so nothing stale from the old _internal folder is left next to the new one.
  ReadRegStr $R0 HKCU "${UNINST_KEY}" "InstallLocation"
  ${If} $R0 != ""
  ${AndIf} ${FileExists} "$R0\uninstall.exe"
    !insertmacro ENSURE_NOT_RUNNING "$R0"
    DetailPrint "Removing the earlier install in $R0"
    ; _?= runs the uninstaller in place and makes ExecWait wait for it.
    ExecWait '"$R0\uninstall.exe" /S _?=$R0' $R1
    ${If} $R1 != 0
      DetailPrint "The earlier uninstaller exited with $R1; overwriting its files."
    ${EndIf}
    Delete "$R0\uninstall.exe"
    RMDir "$R0"
  ${EndIf}
  !insertmacro ENSURE_NOT_RUNNING "$INSTDIR"
  ; Whatever the earlier uninstaller left (or a copy without one): the bundled libraries go as a whole.
  RMDir /r "$INSTDIR\_internal"

  SetOutPath "$INSTDIR"
  File /r "${PAYLOAD}\*.*"
  File "/oname=folio.ico" "${ICON}"
  WriteUninstaller "$INSTDIR\uninstall.exe"

  ; Apps & features (per user).
  WriteRegStr HKCU "${UNINST_KEY}" "DisplayName" "${APP_NAME}"
  WriteRegStr HKCU "${UNINST_KEY}" "DisplayVersion" "${VERSION}"
  WriteRegStr HKCU "${UNINST_KEY}" "Publisher" "${PUBLISHER}"
  WriteRegStr HKCU "${UNINST_KEY}" "DisplayIcon" "$INSTDIR\folio.ico"
  WriteRegStr HKCU "${UNINST_KEY}" "InstallLocation" "$INSTDIR"
  WriteRegStr HKCU "${UNINST_KEY}" "UninstallString" '"$INSTDIR\uninstall.exe"'
  WriteRegStr HKCU "${UNINST_KEY}" "QuietUninstallString" '"$INSTDIR\uninstall.exe" /S'
  WriteRegDWORD HKCU "${UNINST_KEY}" "NoModify" 1
  WriteRegDWORD HKCU "${UNINST_KEY}" "NoRepair" 1
  ${GetSize} "$INSTDIR" "/S=0K" $0 $1 $2
  WriteRegDWORD HKCU "${UNINST_KEY}" "EstimatedSize" $0 ; KiB
SectionEnd

Section "Start menu shortcut" SecStartMenu
  CreateShortcut "$SMPROGRAMS\${APP_NAME}.lnk" "$INSTDIR\${EXE}" "" "$INSTDIR\folio.ico" 0
SectionEnd

Section /o "Desktop shortcut" SecDesktop
  CreateShortcut "$DESKTOP\${APP_NAME}.lnk" "$INSTDIR\${EXE}" "" "$INSTDIR\folio.ico" 0
SectionEnd

; "Open with > Folio" for PDF, text and Markdown files. Folio is listed, never made the default
; handler: the extensions only get an OpenWithProgids entry pointing at Folio's ProgID.
Section "Open with Folio for .pdf, .txt and .md files" SecAssoc
  WriteRegStr HKCU "${CLASSES}\${PROGID}" "" "Document (Folio)"
  WriteRegStr HKCU "${CLASSES}\${PROGID}\DefaultIcon" "" "$INSTDIR\folio.ico"
  WriteRegStr HKCU "${CLASSES}\${PROGID}\shell\open" "FriendlyAppName" "${APP_NAME}"
  WriteRegStr HKCU "${CLASSES}\${PROGID}\shell\open\command" "" '"$INSTDIR\${EXE}" "%1"'
  ; The application's own entry: its name in "Open with" and the types it opens.
  WriteRegStr HKCU "${CLASSES}\Applications\${EXE}" "FriendlyAppName" "${APP_NAME}"
  WriteRegStr HKCU "${CLASSES}\Applications\${EXE}\DefaultIcon" "" "$INSTDIR\folio.ico"
  WriteRegStr HKCU "${CLASSES}\Applications\${EXE}\shell\open\command" "" '"$INSTDIR\${EXE}" "%1"'
  !insertmacro ASSOCIATE ".pdf"
  !insertmacro ASSOCIATE ".txt"
  !insertmacro ASSOCIATE ".md"
  !insertmacro REFRESH_SHELL_ASSOCIATIONS
SectionEnd

;--------------------------------------------------------------------------------------------------
; Uninstall

Function un.onInit
  SetShellVarContext current
FunctionEnd

Section "Uninstall"
  !insertmacro ENSURE_NOT_RUNNING "$INSTDIR"

  Delete "$SMPROGRAMS\${APP_NAME}.lnk"
  Delete "$DESKTOP\${APP_NAME}.lnk"

  !insertmacro UNASSOCIATE ".pdf"
  !insertmacro UNASSOCIATE ".txt"
  !insertmacro UNASSOCIATE ".md"
  DeleteRegKey HKCU "${CLASSES}\${PROGID}"
  DeleteRegKey HKCU "${CLASSES}\Applications\${EXE}"
  !insertmacro REFRESH_SHELL_ASSOCIATIONS

  DeleteRegKey HKCU "${UNINST_KEY}"
  ; The installer only accepts an empty folder or an earlier Folio install, so the folder is Folio's.
  RMDir /r "$INSTDIR"

  ; The data folder is the user's: ask, default No; a silent uninstall keeps it.
  ${If} "$LOCALAPPDATA" != ""
  ${AndIf} ${FileExists} "${DATA_DIR}\*.*"
    ${GetSize} "${DATA_DIR}" "/S=0M" $0 $1 $2
    ${If} ${Cmd} `MessageBox MB_YESNO|MB_ICONQUESTION|MB_DEFBUTTON2 "Also delete ${APP_NAME}'s data folder ($0 MB)?$\r$\n$\r$\n${DATA_DIR}$\r$\n$\r$\nIt holds your document library (the processed documents and their caches), the converted language models, your settings and the downloaded GPU runtime. Without it, Folio has to process documents and fetch models again.$\r$\n$\r$\nChoose No to keep it, for example to reinstall later." /SD IDNO IDYES`
      DetailPrint "Deleting ${DATA_DIR}"
      RMDir /r "${DATA_DIR}"
    ${Else}
      DetailPrint "Kept ${DATA_DIR}"
    ${EndIf}
  ${EndIf}
SectionEnd
