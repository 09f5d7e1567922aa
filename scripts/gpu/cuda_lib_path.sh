#!/usr/bin/env bash
# Prints the folders, joined with ':', that hold the libraries ONNX Runtime's GPU execution
# providers load (onnxruntime-gpu 1.31: CUDA 13, cuDNN 9; TensorRT 10 for the TensorRT
# provider): for LD_LIBRARY_PATH. Looks in the system's CUDA folders and in the NVIDIA pip
# packages of every Python it finds (a PyTorch cu130 install carries CUDA 13 and cuDNN 9).
# Libraries it cannot find are named on stderr; the exit status is 0 either way.
set -uo pipefail

LIBS=(libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libcufft.so.12 libcudnn.so.9
      libnvinfer.so.10 libnvonnxparser.so.10)

roots=()
for py in python3 /opt/torch/.venv/bin/python3 "${PYTHON:-}"; do
  [ -n "$py" ] && command -v "$py" >/dev/null 2>&1 || continue
  while IFS= read -r dir; do
    [ -d "$dir/nvidia" ] && roots+=("$dir/nvidia")
    [ -d "$dir/tensorrt_libs" ] && roots+=("$dir/tensorrt_libs")
    [ -d "$dir/tensorrt" ] && roots+=("$dir/tensorrt")
  done < <("$py" -c 'import site, sys; print("\n".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null)
done
for dir in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64 \
           /usr/lib/x86_64-linux-gnu /usr/local/tensorrt/lib /opt/tensorrt/lib; do
  [ -d "$dir" ] && roots+=("$dir")
done

dirs=()
for lib in "${LIBS[@]}"; do
  found=""
  for root in "${roots[@]}"; do
    found=$(find -L "$root" -maxdepth 5 -name "$lib" -print -quit 2>/dev/null)
    [ -n "$found" ] && break
  done
  if [ -z "$found" ]; then
    echo "cuda_lib_path: $lib not found" >&2
    continue
  fi
  dir=$(dirname "$found")
  case ":$(IFS=:; echo "${dirs[*]:-}"):" in *":$dir:"*) ;; *) dirs+=("$dir") ;; esac
done
(IFS=:; echo "${dirs[*]:-}")
