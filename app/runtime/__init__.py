"""The first-run GPU runtime: a CUDA build of torch fetched per user when an NVIDIA GPU is found.

detect (nvidia-smi) -> builds (which CUDA build) -> source (where its wheel is) + requirements (which wheels it
needs) -> download -> install (unpack, stamp) into layout's folder -> activate (sys.path, restart); messages
words it for the user. startup uses a ready runtime before torch is imported: it and every module it imports
stay free of Qt, torch and the engine. worker (the Qt thread that runs the check and the download) and banner
(the window's line about it) are the GUI side.
"""
