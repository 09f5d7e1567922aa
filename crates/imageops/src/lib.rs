//! An ONNX Runtime custom-op library that decodes encoded images (JPEG, PNG) inside a model.
//!
//! Built as `libtern_imageops.so` and named in a model's `config.pbtxt` the way Triton's ONNX
//! Runtime backend loads custom operations:
//!
//! ```text
//! model_operations { op_library_filename: [ "/path/to/libtern_imageops.so" ] }
//! ```
//!
//! ONNX Runtime opens the file and calls [`RegisterCustomOps`], which adds one operator:
//!
//! * `ai.tern.image::DecodeImage` — input: a string tensor holding exactly one encoded image (the
//!   bytes of a `.jpg` or `.png` file, as Triton's `ensemble_image_client.py` sends them in a BYTES
//!   tensor); output: `uint8 [height, width, 3]`, RGB. Resizing and scaling are left to standard
//!   ONNX operators after it.
//!
//! Why not the `DecodeImage` of PyPI's onnxruntime-extensions: the library in that wheel is a
//! Python extension module and cannot be opened outside a Python process (it needs libpython's
//! symbols), so a Rust server cannot load it.
//!
//! The decoder bounds what a client controls: images larger than [`MAX_SIDE`] pixels on a side or
//! [`MAX_DECODED_BYTES`] decoded are refused with an error, not allocated.
#![allow(unsafe_code)] // the C entry point ONNX Runtime calls, and reading raw string bytes

use std::ffi::CString;
use std::io::Cursor;
use std::ptr;

use ort::AsPointer;
use ort::operator::{
    BoxedKernel, ComputeContext, KernelContext, Operator, OperatorDomain, OperatorInput, OperatorOutput,
};
use ort::sys;
use ort::value::{TensorElementType, ValueRef};

/// The operator domain models use in their `opset_import` and nodes.
pub const DOMAIN: &str = "ai.tern.image";
/// Largest width or height accepted.
pub const MAX_SIDE: u32 = 8192;
/// Largest decoded image accepted, in bytes (RGB8: 3 per pixel).
pub const MAX_DECODED_BYTES: u64 = 64 << 20;

/// Decodes one encoded JPEG or PNG into RGB8 pixels, `[height, width, 3]` row-major.
pub fn decode_rgb(encoded: &[u8]) -> Result<(u32, u32, Vec<u8>), String> {
    if encoded.is_empty() {
        return Err("DecodeImage: the input holds no image bytes".into());
    }
    let mut reader = image::ImageReader::new(Cursor::new(encoded))
        .with_guessed_format()
        .map_err(|e| format!("DecodeImage: cannot read the image: {e}"))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    reader.limits(limits);
    if reader.format().is_none() {
        return Err("DecodeImage: unsupported image format (expected JPEG or PNG bytes)".into());
    }
    let decoded = reader.decode().map_err(|e| format!("DecodeImage: cannot decode the image: {e}"))?;
    let rgb = decoded.into_rgb8();
    let (width, height) = rgb.dimensions();
    Ok((height, width, rgb.into_raw()))
}

/// The bytes of the single element of a string tensor, without requiring UTF-8 (ort's
/// `try_extract_strings` would reject binary data).
fn single_string_bytes(value: &ValueRef<'_>) -> ort::Result<Vec<u8>> {
    let api = ort::api();
    let raw = value.ptr();
    let mut len = 0usize;
    // SAFETY: `raw` is a live string tensor owned by the kernel context for this call; the
    // buffers passed to ORT are sized from what ORT reported.
    unsafe {
        status((api.GetStringTensorDataLength)(raw, &mut len))?;
        let mut count = 0usize;
        let info = {
            let mut info = ptr::null_mut();
            status((api.GetTensorTypeAndShape)(raw, &mut info))?;
            info
        };
        let counted = status((api.GetTensorShapeElementCount)(info, &mut count));
        (api.ReleaseTensorTypeAndShapeInfo)(info);
        counted?;
        if count != 1 {
            return Err(ort::Error::new(format!(
                "DecodeImage: expected one encoded image per call, got {count} elements"
            )));
        }
        let mut bytes = vec![0u8; len];
        let mut offset = 0usize;
        status((api.GetStringTensorContent)(raw, bytes.as_mut_ptr().cast(), len, &mut offset, 1))?;
        Ok(bytes)
    }
}

fn status(status: sys::OrtStatusPtr) -> ort::Result<()> {
    if status.0.is_null() {
        return Ok(());
    }
    let api = ort::api();
    // SAFETY: a non-null status from ORT; read its message, then release it once.
    let message = unsafe {
        let msg = std::ffi::CStr::from_ptr((api.GetErrorMessage)(status.0)).to_string_lossy().into_owned();
        (api.ReleaseStatus)(status.0);
        msg
    };
    Err(ort::Error::new(message))
}

struct DecodeImage;

impl Operator for DecodeImage {
    type Kernel<'attr> = BoxedKernel<'attr>;

    fn name(&self) -> &str {
        "DecodeImage"
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [OperatorInput::required(TensorElementType::String)]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Uint8)]
    }

    fn create_kernel<'attr>(&self, _: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        Ok(Box::new(|ctx: &ComputeContext| {
            let input = ctx.input(0)?.ok_or_else(|| ort::Error::new("DecodeImage: missing input 0"))?;
            let encoded = single_string_bytes(&input)?;
            let (height, width, pixels) = decode_rgb(&encoded).map_err(ort::Error::new)?;
            let mut output = ctx
                .output(0, vec![i64::from(height), i64::from(width), 3])?
                .ok_or_else(|| ort::Error::new("DecodeImage: missing output 0"))?;
            let (_, out) = output.try_extract_tensor_mut::<u8>()?;
            out.copy_from_slice(&pixels);
            Ok(())
        }))
    }
}

fn register(options: *mut sys::OrtSessionOptions) -> ort::Result<()> {
    let mut domain = OperatorDomain::new(DOMAIN)?.add(DecodeImage)?;
    // SAFETY: `options` is the session options ORT passed to RegisterCustomOps.
    status(unsafe { (ort::api().AddCustomOpDomain)(options, domain.ptr_mut()) })?;
    // ORT keeps pointers into the domain for every session built from these options, and the
    // library is never unloaded while the process serves: the domain lives as long.
    std::mem::forget(domain);
    Ok(())
}

/// The entry point ONNX Runtime's `RegisterCustomOpsLibrary` looks up.
///
/// # Safety
/// Called by ONNX Runtime with valid session options and its API base.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn RegisterCustomOps(
    options: *mut sys::OrtSessionOptions,
    api_base: *const sys::OrtApiBase,
) -> sys::OrtStatusPtr {
    // SAFETY: ORT passes its own API base; GetApi returns null for a version it does not know.
    let api = unsafe { ((*api_base).GetApi)(sys::ORT_API_VERSION) };
    if api.is_null() {
        // Without the API table there is no way to build an error status: ORT then reports the
        // model's DecodeImage nodes as having no kernel.
        eprintln!("tern_imageops: this ONNX Runtime does not provide API version {}", sys::ORT_API_VERSION);
        return sys::OrtStatusPtr(ptr::null_mut());
    }
    // SAFETY: non-null, and valid for the life of the process.
    ort::set_api(unsafe { (*api).clone() });
    match register(options) {
        Ok(()) => sys::OrtStatusPtr(ptr::null_mut()),
        Err(e) => {
            let msg = CString::new(e.to_string().replace('\0', " ")).unwrap_or_default();
            // SAFETY: the API table was just installed; ORT takes ownership of the status.
            unsafe { (ort::api().CreateStatus)(sys::OrtErrorCode::ORT_FAIL, msg.as_ptr()) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let img =
            image::RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, (x + y) as u8]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).expect("encode png");
        out.into_inner()
    }

    #[test]
    fn decodes_png_to_rgb_rows() {
        let (h, w, pixels) = decode_rgb(&png(5, 3)).expect("decode");
        assert_eq!((h, w), (3, 5));
        assert_eq!(pixels.len(), 3 * 5 * 3);
        // Pixel (x=4, y=2) is the last one: [4, 2, 6].
        assert_eq!(&pixels[pixels.len() - 3..], &[4, 2, 6]);
    }

    #[test]
    fn refuses_empty_garbage_and_truncated_input() {
        let reason = |bytes: &[u8]| decode_rgb(bytes).err().unwrap_or_default();
        assert!(reason(b"").contains("no image bytes"));
        assert!(reason(b"not an image").contains("unsupported image format"));
        let bytes = png(16, 16);
        assert!(reason(&bytes[..bytes.len() / 2]).contains("cannot decode"));
    }
}
