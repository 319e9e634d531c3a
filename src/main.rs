//! The `optin-relay` binary; everything it does is in [`optin_relay::cli`].

fn main() -> std::process::ExitCode {
    optin_relay::cli::main()
}
