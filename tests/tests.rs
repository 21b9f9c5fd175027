//! End-to-end tests of the `mbpipe` binary, as one test binary.

mod pipeline;
mod quick;
mod reliability;
mod util;
