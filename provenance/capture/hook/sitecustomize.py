"""Startup hook of `prov run`'s capture layer: on PYTHONPATH only for the wrapped command.

Python imports `sitecustomize` at startup. This one installs the capture hooks
(provenance.capture.inject) when PROV_CAPTURE names a bundle folder, and does nothing
otherwise; then it hands over to the next `sitecustomize` on the path, if there is one.
It never stops the command: a failure is printed to stderr and the command runs uncaptured.
"""

import os
import sys


def _install() -> None:
    bundle = os.environ.get("PROV_CAPTURE")
    if not bundle:
        return
    try:
        try:
            from provenance.capture import inject
        except ImportError:  # another interpreter: load the package from beside this folder
            import importlib.util

            pkg = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            spec = importlib.util.spec_from_file_location("provenance", os.path.join(pkg, "__init__.py"),
                                                          submodule_search_locations=[pkg])
            mod = importlib.util.module_from_spec(spec)
            sys.modules["provenance"] = mod
            spec.loader.exec_module(mod)
            from provenance.capture import inject
        inject.install(bundle)
    except Exception as exc:  # never stop the command
        sys.stderr.write(f"prov run: capture not installed in pid {os.getpid()}: {exc!r}\n")


def _chain() -> None:
    """Run the sitecustomize this one shadows (the next one on sys.path)."""
    here = os.path.dirname(os.path.abspath(__file__))
    import importlib.machinery
    import importlib.util

    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except Exception as exc:
        sys.stderr.write(f"prov run: the original sitecustomize failed: {exc!r}\n")


_install()
_chain()
