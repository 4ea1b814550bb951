use std::process::ExitCode;

use smtpguard::agent::api::ClientError;

fn main() -> ExitCode {
    match smtpguard::cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The whole cause chain on one line, without a backtrace: this is for operators.
            eprintln!("error: {error:#}");
            // Exit code 2: the agent could not be reached at all; 3: its socket refuses this
            // user; 1: anything else.
            match error.downcast_ref::<ClientError>() {
                Some(ClientError::Unreachable { .. }) => ExitCode::from(2),
                Some(ClientError::PermissionDenied { .. }) => ExitCode::from(3),
                _ => ExitCode::FAILURE,
            }
        }
    }
}
