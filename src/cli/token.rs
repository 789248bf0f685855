//! `tickstream token`: sign a client token with the node's secret or a private key.

use std::path::PathBuf;

use crate::auth::{self, Claims, Signer};
use crate::config::Dur;

/// Options.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  tickstream token --secret-file secret.key --sub dashboard-1 --symbols AAPL,BTC-* --ttl 12h\n  tickstream token --secret-file secret.key --sub feed-1 --roles publish --ttl 30d\n  tickstream token --key 2026-q1.key --kid 2026-q1 --sub dashboard-1"
)]
pub struct Args {
    /// File holding the HS256 secret the node checks tokens with.
    #[arg(long, env = "TICKSTREAM_JWT_SECRET_FILE", value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// Signing key instead of --secret-file: a PKCS#8 PEM private key (RSA: RS256,
    /// P-256: ES256) whose public key the node has, or an HS256 secret file.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Key id put in the token header (`kid`); the node picks the key with this id.
    /// Default: none.
    #[arg(long, value_name = "KID")]
    kid: Option<String>,
    /// Who the token is for.
    #[arg(long)]
    sub: String,
    /// Symbols the holder may receive (exact, `*`, or prefixes like `BTC-*`), as separate
    /// arguments or comma-separated. Default: every symbol.
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    symbols: Vec<String>,
    /// Roles granted: subscribe, publish, metrics (`/metrics` with `--metrics-auth jwt`).
    /// Default: subscribe.
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    roles: Vec<String>,
    /// Lifetime, like 30m, 12h, 7days. Default: 1h.
    #[arg(long, default_value = "1h")]
    ttl: Dur,
}

pub(super) fn run(args: Args) -> anyhow::Result<()> {
    // --key wins over a secret file named only by the environment.
    let path = match (args.key, args.secret_file) {
        (Some(key), _) => key,
        (None, Some(secret)) => secret,
        (None, None) => anyhow::bail!("give --key FILE or --secret-file FILE to sign with"),
    };
    let signer = Signer::from_file(&path, args.kid)?;
    for r in &args.roles {
        let metrics = crate::transport::door::ROLE_METRICS;
        if r != auth::ROLE_SUBSCRIBE && r != auth::ROLE_PUBLISH && r != metrics {
            anyhow::bail!("unknown role {r:?} (subscribe|publish|metrics)");
        }
    }
    let claims = Claims {
        sub: args.sub,
        exp: auth::expiry_in(args.ttl.0),
        symbols: (!args.symbols.is_empty()).then_some(args.symbols),
        roles: (!args.roles.is_empty()).then_some(args.roles),
    };
    println!("{}", signer.sign(&claims)?);
    Ok(())
}
