//! `imageserver user hash-password`: the argon2 hash a `[[http.users]]`
//! entry's `password_hash` takes.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

/// `imageserver user ...`.
#[derive(Args, Debug)]
pub struct UserArgs {
    #[command(subcommand)]
    command: UserCommand,
}

#[derive(Subcommand, Debug)]
enum UserCommand {
    /// Read a password from standard input (one line) and print its argon2
    /// hash, for `password_hash` in `[[http.users]]`.
    HashPassword,
}

/// Runs `imageserver user ...`.
pub fn user(args: UserArgs) -> Result<ExitCode> {
    match args.command {
        UserCommand::HashPassword => hash_password(),
    }
}

fn hash_password() -> Result<ExitCode> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("password (shown as typed; pipe it in to avoid that): ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\n', '\r']);
    if password.len() < 8 {
        bail!("the password must have at least 8 characters");
    }
    let hash = imageserver_core::web::auth::hash_password(password)?;
    println!("{hash}");
    Ok(ExitCode::SUCCESS)
}
