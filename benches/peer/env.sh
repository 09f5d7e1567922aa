# Sourced by the bench scripts: the environment the bundled tritonserver needs.
#   TRITON_BIN, TRITON_BACKENDS, TRITON_CACHES, and LD_LIBRARY_PATH / PYTHONPATH for the
#   server and its Python-backend stubs (the stub embeds libpython: it needs the interpreter's
#   lib dir, or models fail with "'_thread.RLock' object has no attribute '_recursion_count'",
#   and the venv's site-packages for numpy and onnxruntime).
_peer_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
_peer_py=$_peer_root/benches/.peer-venv/bin/python
_peer_site=$("$_peer_py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
_peer_libdir=$("$_peer_py" -c "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))")
export TRITON_BIN=$_peer_root/benches/out/peer/tritonserver/bin/tritonserver
export TRITON_BACKENDS=$_peer_root/benches/out/peer/tritonserver/backends
export TRITON_CACHES=$_peer_root/benches/out/peer/tritonserver/caches
export TRITON_LD_LIBRARY_PATH=$_peer_site/nvidia_pytriton.libs:$_peer_libdir
export TRITON_PYTHONPATH=$_peer_site
