//! What the operator commands (`corral tasks`, `queues`, `stats`,
//! `workers`) share: the broker and the tenant they act on, and aligned
//! tables.
//!
//! They talk to the shared (Redis) broker directly, as the operator, across
//! tenants: the embedded broker lives inside one process, so there would be
//! nothing to operate. Without `--tenant`, a listing covers every tenant
//! that has had a task on this Redis, and a verb on one task or queue acts
//! for the one tenant that has it (a queue name several tenants use needs
//! `--tenant`). Everything a tenant wrote (queue and job names, error
//! messages) reaches the terminal inert. This module never changes a task.

use anyhow::{Context as _, bail};
use clap::Args;

use super::broker_cmds::{CONNECT_PATIENCE, RedisArgs};
use crate::broker::{Broker, BrokerError, RedisBroker, TenantQuota};
use crate::catalog::RedisCatalog;
use crate::submit::{find_tenant, valid_queue};
use crate::task::TaskId;
use crate::text::Inert;

/// The Redis connection and the tenant of an operator command.
#[derive(Debug, Args)]
pub(super) struct Target {
    #[command(flatten)]
    pub redis: RedisArgs,
    /// The tenant; without it, every tenant (listings) or the one tenant
    /// that has the task or queue (verbs).
    #[arg(long)]
    pub tenant: Option<String>,
}

impl Target {
    /// The broker, for `command` (named in the error when there is no
    /// Redis).
    pub async fn broker(&self, command: &str) -> anyhow::Result<RedisBroker> {
        self.redis.connect(command).await
    }

    /// The tenant a verb acts on: `--tenant`, or the default tenant.
    pub fn tenant_or_default(&self) -> String {
        self.tenant
            .clone()
            .unwrap_or_else(|| crate::task::DEFAULT_TENANT.to_owned())
    }

    /// The tenants a listing covers: `--tenant`, or every tenant that has
    /// had a task.
    pub async fn tenants(&self, broker: &RedisBroker) -> anyhow::Result<Vec<String>> {
        match &self.tenant {
            Some(t) => Ok(vec![t.clone()]),
            None => broker
                .tenants_with_tasks()
                .await
                .context("listing the tenants"),
        }
    }

    /// The tenant task `id` belongs to: `--tenant`, or the one that has it.
    pub async fn tenant_of_task(&self, broker: &RedisBroker, id: TaskId) -> anyhow::Result<String> {
        if let Some(t) = &self.tenant {
            return Ok(t.clone());
        }
        for tenant in self.tenants(broker).await? {
            if broker
                .task(&tenant, id)
                .await
                .with_context(|| format!("looking for task {id}"))?
                .is_some()
            {
                return Ok(tenant);
            }
        }
        bail!("task {id} not found for any tenant")
    }

    /// The tenant whose `queue` is meant: `--tenant` if it has a queue of
    /// that name, or the one tenant that has one.
    pub async fn tenant_of_queue(
        &self,
        broker: &RedisBroker,
        queue: &str,
    ) -> anyhow::Result<String> {
        check_queue(queue)?;
        let mut found = Vec::new();
        for tenant in self.tenants(broker).await? {
            let names = broker
                .queue_names(&tenant)
                .await
                .with_context(|| format!("listing the queues of tenant `{}`", Inert(&tenant)))?;
            if names.iter().any(|q| q == queue) {
                found.push(tenant);
            }
        }
        match found.len() {
            0 if self.tenant.is_some() => bail!(
                "queue `{}` not found for tenant `{}`",
                Inert(queue),
                Inert(self.tenant.as_deref().unwrap_or_default())
            ),
            0 => bail!("queue `{}` not found for any tenant", Inert(queue)),
            1 => Ok(found.remove(0)),
            _ => bail!(
                "tenants {} all have a queue `{}`: name one with --tenant",
                found
                    .iter()
                    .map(|t| format!("`{}`", Inert(t)))
                    .collect::<Vec<_>>()
                    .join(", "),
                Inert(queue)
            ),
        }
    }

    /// The catalog on the same Redis, for `command`; gives up after
    /// [`CONNECT_PATIENCE`].
    pub async fn catalog(&self, command: &str) -> anyhow::Result<RedisCatalog> {
        tokio::time::timeout(CONNECT_PATIENCE, self.redis.catalog(command))
            .await
            .map_err(|_| anyhow::anyhow!("the catalog did not answer within 2 s"))?
    }

    /// `tenant`'s queue quota from the catalog on the same Redis, as an
    /// enqueue through the API or `corral enqueue` applies it.
    pub async fn quota(&self, tenant: &str) -> anyhow::Result<TenantQuota> {
        let catalog = self.catalog("tasks").await?;
        let found = find_tenant(&catalog, tenant)
            .await
            .with_context(|| format!("reading the limits of tenant `{}`", Inert(tenant)))?;
        Ok(found.limits.queue_quota())
    }
}

/// Refuses what cannot be a queue's name (the rule every enqueue follows).
pub(super) fn check_queue(queue: &str) -> anyhow::Result<()> {
    if !valid_queue(queue) {
        bail!(
            "`{}` is not a queue name: queues are named with 1 to 128 letters, digits, `-`, `_`, `.`, `:`",
            Inert(queue)
        );
    }
    Ok(())
}

/// A broker refusal as the operator reads it: what, for which tenant.
pub(super) fn refused(e: BrokerError, tenant: &str) -> anyhow::Error {
    match e {
        BrokerError::NotFound { what, .. } => {
            anyhow::anyhow!("{what} not found for tenant `{}`", Inert(tenant))
        }
        BrokerError::Conflict { reason, .. } => anyhow::anyhow!("{reason}"),
        other => anyhow::Error::new(other),
    }
}

/// A table printed with its columns aligned; every cell inert.
pub(super) struct Table {
    headers: Vec<&'static str>,
    /// Columns aligned right (numbers).
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table of these columns; a header starting with `>` is aligned
    /// right (the `>` is not shown).
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers
                .iter()
                .map(|h| h.strip_prefix('>').unwrap_or(h))
                .collect(),
            right: headers.iter().map(|h| h.starts_with('>')).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (one cell per column; text made inert here).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.iter().map(|c| Inert(c).to_string()).collect());
    }

    /// Whether no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Prints the table, or when it has no row, `empty` on stderr (so a
    /// script reading stdout sees nothing).
    pub fn print_or(&self, empty: &str) {
        if self.is_empty() {
            eprintln!("{empty}");
        } else {
            self.print();
        }
    }

    /// Prints the header and the rows.
    pub fn print(&self) {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut out = String::new();
            for (i, cell) in cells.iter().enumerate() {
                let width = widths.get(i).copied().unwrap_or(0);
                let pad = " ".repeat(width.saturating_sub(cell.chars().count()));
                if i > 0 {
                    out.push_str("  ");
                }
                if self.right.get(i).copied().unwrap_or(false) {
                    out.push_str(&pad);
                    out.push_str(cell);
                } else {
                    out.push_str(cell);
                    if i + 1 < cells.len() {
                        out.push_str(&pad);
                    }
                }
            }
            // An empty last cell leaves nothing to pad for.
            out.truncate(out.trim_end().len());
            out
        };
        let headers: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        say!("{}", line(&headers));
        for row in &self.rows {
            say!("{}", line(row));
        }
    }
}
