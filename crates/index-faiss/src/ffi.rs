//! Thin unsafe wrappers over the FAISS C API for what the `faiss` crate does not offer:
//! searching through a shared reference (FAISS's `search` is `const` and thread-safe on CPU
//! indexes) and search parameters whose selector is freed with them.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::ptr;

use faiss::index::IndexImpl;
use faiss_sys::{
    faiss_IDSelectorBitmap_new, faiss_IDSelector_free, faiss_Index_search_with_params,
    faiss_SearchParametersIVF_new_with, faiss_SearchParameters_free, faiss_SearchParameters_new,
    faiss_get_last_error, idx_t, FaissIDSelector, FaissIDSelectorBitmap, FaissSearchParameters,
};
use shoal_types::{Error, Result};

fn check(code: i32, what: &str) -> Result<()> {
    if code == 0 {
        return Ok(());
    }
    // SAFETY: FAISS returns a pointer to a thread-local, NUL-terminated message or null.
    let msg = unsafe {
        let p = faiss_get_last_error();
        if p.is_null() {
            String::from("unknown FAISS error")
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    Err(Error::internal(format!("FAISS {what}: {}", msg.trim())))
}

/// How a selector is passed to an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParamsKind {
    /// `SearchParametersIVF` (IVF indexes require it; carries nprobe).
    Ivf,
    /// Plain `SearchParameters` (Flat, HNSW, SQ, PQ...).
    Base,
}

/// Search parameters holding a live-position bitmap selector; frees both on drop. The bitmap
/// is borrowed, not copied, by FAISS, hence the lifetime.
pub(crate) struct SelectorParams<'a> {
    params: *mut FaissSearchParameters,
    selector: *mut FaissIDSelectorBitmap,
    _bitmap: &'a [u8],
}

impl<'a> SelectorParams<'a> {
    pub(crate) fn new(kind: ParamsKind, live: &'a [u8], nprobe: usize) -> Result<Self> {
        let mut selector = ptr::null_mut();
        // SAFETY: `live` outlives the selector (lifetime 'a); FAISS reads at most `live.len()`
        // bytes (its `n` is the bitmap's size in bytes).
        check(
            unsafe { faiss_IDSelectorBitmap_new(&mut selector, live.len(), live.as_ptr()) },
            "creating selector",
        )?;
        let mut this = SelectorParams {
            params: ptr::null_mut(),
            selector,
            _bitmap: live,
        };
        let sel = selector as *mut FaissIDSelector;
        let code = match kind {
            ParamsKind::Ivf => {
                let mut p = ptr::null_mut();
                // SAFETY: valid out-pointer and selector; max_codes 0 means unlimited.
                let code = unsafe { faiss_SearchParametersIVF_new_with(&mut p, sel, nprobe, 0) };
                this.params = p as *mut FaissSearchParameters;
                code
            }
            ParamsKind::Base => {
                // SAFETY: valid out-pointer and selector.
                unsafe { faiss_SearchParameters_new(&mut this.params, sel) }
            }
        };
        check(code, "creating search parameters")?;
        Ok(this)
    }
}

impl Drop for SelectorParams<'_> {
    fn drop(&mut self) {
        // SAFETY: both were created by FAISS above, are owned here, and SearchParameters does
        // not own its selector.
        unsafe {
            if !self.params.is_null() {
                faiss_SearchParameters_free(self.params);
            }
            faiss_IDSelector_free(self.selector as *mut FaissIDSelector);
        }
    }
}

/// `k`-NN search through a shared reference. Returns `(distances, labels)` of `n * k` each,
/// labels `-1` where fewer than `k` results exist.
pub(crate) fn search(
    index: &IndexImpl,
    queries: &[f32],
    n: usize,
    k: usize,
    params: Option<&SelectorParams<'_>>,
) -> Result<(Vec<f32>, Vec<idx_t>)> {
    let mut distances = vec![0f32; n * k];
    let mut labels: Vec<idx_t> = vec![-1; n * k];
    let params = params.map_or(ptr::null(), |p| p.params as *const FaissSearchParameters);
    // SAFETY: the index pointer is valid for the life of `index`; FAISS CPU search is const
    // and safe to call concurrently; buffers hold n*k entries and queries n*d floats.
    let code = unsafe {
        faiss_Index_search_with_params(
            index.inner_ptr(),
            n as idx_t,
            queries.as_ptr(),
            k as idx_t,
            params,
            distances.as_mut_ptr(),
            labels.as_mut_ptr(),
        )
    };
    check(code, "search")?;
    Ok((distances, labels))
}
