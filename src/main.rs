//! The `shoal` binary: parses arguments, runs the chosen role, maps failures
//! to exit codes. Everything else lives in the library crates.

use clap::{Parser, Subcommand};

/// Shoal: a memcached-compatible clustered store and smart proxy.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Map keys to vbuckets the way libvbucket does (a debugging aid).
    Vbucket {
        /// Number of vbuckets (a power of two).
        #[arg(long, default_value_t = 1024)]
        vbuckets: usize,
        /// Keys to map.
        keys: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Vbucket { vbuckets, keys } => {
            anyhow::ensure!(
                vbuckets.is_power_of_two() && vbuckets <= 1 << 16,
                "--vbuckets must be a power of two up to 65536"
            );
            for key in keys {
                let vb = shoal_vbmap::hash::vbucket_of(key.as_bytes(), vbuckets);
                println!("{key}\t{vb}");
            }
        }
    }
    Ok(())
}
