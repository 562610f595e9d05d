"""The window's widgets: they take plain data (app.backend's result types) and emit Qt signals; none imports
the engine."""
