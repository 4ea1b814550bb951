fn main() -> anyhow::Result<()> {
    smtpguard::cli::run()
}
