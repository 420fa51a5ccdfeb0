"""Runtimes for the probe tests, loaded by ``module:class`` in the probe's child process: one
that crashes the process the way OpenVINO did on a Video Swin graph (a segfault while loading the
model), one that hangs."""
import ctypes
import time


class CrashSession:
    runtime = "crash"

    def __init__(self, path, providers=None, threads=None):
        ctypes.string_at(0)  # reads address 0: SIGSEGV, a real crash of the process


class HangSession:
    runtime = "hang"

    def __init__(self, path, providers=None, threads=None):
        time.sleep(3600)
