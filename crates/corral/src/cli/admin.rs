//! `corral admin …`: the operator's API tokens, in the Redis catalog.
//!
//! - `token [--name NOTE]` makes an admin token and prints it, once;
//! - `tokens` lists them: ids, names and creation times (never secrets);
//! - `revoke ID` makes one stop working at once, by the id `tokens` lists.
//!
//! An admin token acts on every tenant through the HTTP API: each route over
//! one tenant's things takes it with `?tenant=NAME`, and the routes over all
//! tenants (`GET /v1/tenants`) take only it. It is stored as tenant tokens
//! are, only its sha256, and it names no tenant: tenant commands never see
//! it (`corral tenants revoke` does not revoke it; `admin revoke` does).
//! The token goes to stdout alone (`ADMIN=$(corral admin token)`), the rest
//! to stderr. The catalog is the one `--redis`, `--prefix`, `--cluster` and
//! the TLS options name.

use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};

use super::broker_cmds::RedisArgs;
use super::tenants::catalog;
use crate::catalog::Catalog;
use crate::tenant::{Token, TokenId, check_token_name};

/// `corral admin …`.
#[derive(Debug, Args)]
pub struct AdminArgs {
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Make an admin token and print it (shown once): it acts on every
    /// tenant.
    Token(TokenArgs),
    /// List the admin tokens: ids, names and creation times.
    Tokens(ListArgs),
    /// Revoke an admin token by its id (see `tokens`): it stops working at
    /// once.
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// A note saying whose or what the token is for (listed by `tokens`).
    #[arg(long, value_name = "NOTE")]
    name: Option<String>,
    #[command(flatten)]
    redis: RedisArgs,
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Print a JSON array (id, created_at, name) instead of lines.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    redis: RedisArgs,
}

#[derive(Debug, Args)]
struct RevokeArgs {
    /// The token's id (`tok_…`), as `corral admin tokens` lists it.
    id: String,
    #[command(flatten)]
    redis: RedisArgs,
}

/// Runs `corral admin …`.
pub async fn run(args: AdminArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        AdminCommand::Token(args) => create(args).await,
        AdminCommand::Tokens(args) => list(args).await,
        AdminCommand::Revoke(args) => revoke(args).await,
    }
}

async fn create(args: TokenArgs) -> anyhow::Result<ExitCode> {
    if let Some(name) = &args.name {
        check_token_name(name).map_err(anyhow::Error::msg)?;
    }
    let catalog = catalog(&args.redis).await?;
    let token = Token::generate();
    let info = catalog
        .add_admin_token(&token.hash(), args.name.as_deref())
        .await
        .context("storing the admin token")?;
    eprintln!(
        "made admin token {}; it acts on every tenant. It follows, shown this once",
        info.id
    );
    say!("{}", token.expose());
    Ok(ExitCode::SUCCESS)
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let catalog = catalog(&args.redis).await?;
    let tokens = catalog
        .admin_tokens()
        .await
        .context("listing the admin tokens")?;
    if args.json {
        say!("{}", serde_json::to_string_pretty(&tokens)?);
        return Ok(ExitCode::SUCCESS);
    }
    if tokens.is_empty() {
        eprintln!("no admin tokens");
    }
    for token in tokens {
        let created = token
            .created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        match &token.name {
            // Names were checked at creation: printable, one line.
            Some(name) => say!("{}  created {created}  {name}", token.id),
            None => say!("{}  created {created}", token.id),
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn revoke(args: RevokeArgs) -> anyhow::Result<ExitCode> {
    if args.id.trim().starts_with("crl_") {
        return Err(super::secret::refuse_on_command_line(
            "a token's secret",
            "revoke by id: `corral admin tokens` lists them, then `corral admin revoke tok_…`",
        ));
    }
    let Some(id) = TokenId::parse(&args.id) else {
        bail!(
            "`{}` is not a token id (`tok_` and 12 hex digits); `corral admin tokens` lists them",
            args.id
        );
    };
    let catalog = catalog(&args.redis).await?;
    if catalog
        .revoke_admin_token(&id)
        .await
        .with_context(|| format!("revoking admin token {id}"))?
    {
        eprintln!("revoked admin token {id}");
        Ok(ExitCode::SUCCESS)
    } else {
        bail!(
            "there is no admin token {id} (revoked already, or mistyped); \
             `corral admin tokens` lists them"
        )
    }
}
