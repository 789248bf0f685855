//! `tickstream token`: sign a client token with the node's secret.

use std::path::PathBuf;

use crate::auth::{self, Claims};
use crate::config::Dur;

/// Options.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  tickstream token --secret-file secret.key --sub dashboard-1 --symbols AAPL,BTC-* --ttl 12h\n  tickstream token --secret-file secret.key --sub feed-1 --roles publish --ttl 30d"
)]
pub struct Args {
    /// File holding the HS256 secret the node checks tokens with.
    #[arg(long, env = "TICKSTREAM_JWT_SECRET_FILE", value_name = "FILE")]
    secret_file: PathBuf,
    /// Who the token is for.
    #[arg(long)]
    sub: String,
    /// Symbols the holder may receive (exact, `*`, or prefixes like `BTC-*`), as separate
    /// arguments or comma-separated. Default: every symbol.
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    symbols: Vec<String>,
    /// Roles granted: subscribe, publish. Default: subscribe.
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    roles: Vec<String>,
    /// Lifetime, like 30m, 12h, 7days. Default: 1h.
    #[arg(long, default_value = "1h")]
    ttl: Dur,
}

pub(super) fn run(args: Args) -> anyhow::Result<()> {
    let secret = auth::read_secret(&args.secret_file)?;
    for r in &args.roles {
        if r != auth::ROLE_SUBSCRIBE && r != auth::ROLE_PUBLISH {
            anyhow::bail!("unknown role {r:?} (subscribe|publish)");
        }
    }
    let claims = Claims {
        sub: args.sub,
        exp: auth::expiry_in(args.ttl.0),
        symbols: (!args.symbols.is_empty()).then_some(args.symbols),
        roles: (!args.roles.is_empty()).then_some(args.roles),
    };
    println!("{}", auth::issue(&secret, &claims)?);
    Ok(())
}
