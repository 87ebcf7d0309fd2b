//! Forward and backward kernels. KERNELS HELPER: implement.
