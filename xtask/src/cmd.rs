//! Running child processes, with errors that name the command line.

use std::{
    fs::File,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// The command as a shell would show it, with the environment variables set on it.
pub fn line(command: &Command) -> String {
    let envs = command.get_envs().filter_map(|(key, value)| {
        value.map(|value| format!("{}={}", key.to_string_lossy(), value.to_string_lossy()))
    });
    let words = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|word| word.to_string_lossy().into_owned());
    envs.chain(words).collect::<Vec<_>>().join(" ")
}

/// Prints the command line, runs it with the terminal as its stdio and fails unless it exits
/// successfully.
pub fn run(command: &mut Command) -> Result<()> {
    let line = line(command);
    println!("$ {line}");
    let status = command
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs the command and returns its stdout; on failure the error carries its stderr.
pub fn output(command: &mut Command) -> Result<String> {
    let line = line(command);
    let output = command
        .output()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !output.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).with_context(|| format!("`{line}` printed invalid UTF-8"))
}

/// Runs the command with its stdout and stderr going to `log` (overwritten); on failure the
/// error points there.
pub fn run_logged(command: &mut Command, log: &Path) -> Result<()> {
    let line = line(command);
    let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let stderr = file
        .try_clone()
        .with_context(|| format!("duplicating the handle of {}", log.display()))?;
    let status = command
        .stdout(file)
        .stderr(stderr)
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!(
            "`{line}` failed ({status}); its output is in {}",
            log.display()
        );
    }
    Ok(())
}

/// Prints the command line, runs it with its stdout handed to `each` line by line (stderr
/// stays on the terminal) and fails unless both `each` and the command succeed.
pub fn run_lines(command: &mut Command, mut each: impl FnMut(&str) -> Result<()>) -> Result<()> {
    let line = line(command);
    println!("$ {line}");
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    let stdout = child.stdout.take().context("the child's stdout")?;
    for output in BufReader::new(stdout).lines() {
        each(&output.with_context(|| format!("reading the output of `{line}`"))?)?;
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_lines_hands_over_every_line_and_fails_with_the_command() {
        let mut seen = Vec::new();
        run_lines(Command::new("printf").arg("one\\ntwo\\n"), |line| {
            seen.push(line.to_owned());
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, ["one", "two"]);
        let error = run_lines(&mut Command::new("false"), |_| Ok(())).unwrap_err();
        assert!(error.to_string().contains("`false` failed"), "{error}");
    }
}
