"""Runtime management for the desktop app (first-run GPU runtime); Qt-free and torch-free."""
