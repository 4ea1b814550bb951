use std::process::ExitCode;

fn main() -> ExitCode {
    match smtpguard::cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The whole cause chain on one line, without a backtrace: this is for operators.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
