use std::process::ExitCode;

use smtpguard::{
    agent::api::{ClientError, ErrorKind},
    cli::AgentRefused,
};

fn main() -> ExitCode {
    match smtpguard::cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The whole cause chain on one line, each cause once, without a backtrace: this
            // is for operators.
            // Under journald, with its priority: the agent's last word is an error.
            eprintln!(
                "{}error: {}",
                smtpguard::logging::error_prefix(),
                smtpguard::cli::error_text(&error)
            );
            // Exit code 2: the agent could not be reached, or gave no answer (it died during
            // the request, which may or may not have been carried out); 3: its socket refuses
            // this user; 1: anything else, a refusal included, after which nothing has changed.
            if error
                .downcast_ref::<AgentRefused>()
                .is_some_and(|refused| refused.kind == ErrorKind::Unavailable)
            {
                return ExitCode::from(2);
            }
            match error.downcast_ref::<ClientError>() {
                Some(
                    ClientError::Unreachable { .. }
                    | ClientError::BadAnswer { .. }
                    | ClientError::Gone { .. },
                ) => ExitCode::from(2),
                Some(ClientError::PermissionDenied { .. }) => ExitCode::from(3),
                _ => ExitCode::FAILURE,
            }
        }
    }
}
