//! End-to-end tests of the `mbpipe` binary, as one test binary.

mod bad_input;
mod low_precision;
mod object_storage;
mod output_folder;
mod output_formats;
mod pipeline;
mod quick;
mod reliability;
mod s3_server;
mod util;
mod validate_plan;
mod zero_shot;
