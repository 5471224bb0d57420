//! Commands on instances (`ssh`) and on this machine (`local`).

use std::sync::Arc;

use rhai::{Array, Dynamic, Engine, Map};

use super::func;
use crate::effects::ExecOptions;
use crate::engine::context::ScriptContext;
use crate::engine::convert::{cmd_arg, exec_map, exec_options, throw, RhaiResult};

pub fn register(engine: &mut Engine, ctx: &Arc<ScriptContext>) {
    const SSH_DOC: &str = "Runs `cmd` on `inst` over ssh (one multiplexed connection per host, reused for the whole run). `cmd` is a shell line, or an array whose every element is quoted (`[\"./deploy.sh\", version]`). Returns `#{status, stdout, stderr, duration}`. A non-zero exit fails with kind `command_failed` (host, command, status, last 20 lines of stderr) unless `#{check: false}`; `#{timeout: \"30s\"}` overrides `ssh.command_timeout`.
Example: `ssh(inst, [\"./deploy.sh\", var(\"version\")]);`";
    let c = ctx.clone();
    func("ssh", &["inst: Instance", "cmd: Dynamic", "Map"], SSH_DOC).register_into_engine(
        engine,
        move |inst: Dynamic, cmd: Dynamic| -> RhaiResult<Map> {
            let inst = crate::engine::instance::arg(&c.effects.inventory, &inst)?;
            let cmd = cmd_arg(&cmd)?;
            c.block_on(c.effects.ssh(inst, &cmd, ExecOptions::default()))
                .map(|o| exec_map(&o))
                .map_err(throw)
        },
    );
    let c = ctx.clone();
    func(
        "ssh",
        &["inst: Instance", "cmd: Dynamic", "options: Map", "Map"],
        SSH_DOC,
    )
    .register_into_engine(
        engine,
        move |inst: Dynamic, cmd: Dynamic, opts: Map| -> RhaiResult<Map> {
            let inst = crate::engine::instance::arg(&c.effects.inventory, &inst)?;
            let cmd = cmd_arg(&cmd)?;
            let opts = exec_options(&opts)?;
            c.block_on(c.effects.ssh(inst, &cmd, opts))
                .map(|o| exec_map(&o))
                .map_err(throw)
        },
    );

    let c = ctx.clone();
    func(
        "connect_ahead",
        &["insts: Array", "()"],
        "Opens ssh connections to `insts` in the background (at most `ssh.max_parallel` connects at once) while the current step works, so their first command does not wait for the handshake. Not a step: nothing in a plan or the journal; a host that cannot be reached is reported at its own first command, never here. `rollout::rolling` does it for the next batch.
Example: `connect_ahead(groups[b + 1]);`",
    )
    .register_into_engine(engine, move |insts: Array| -> RhaiResult<()> {
        let insts = insts
            .iter()
            .map(|i| crate::engine::instance::arg(&c.effects.inventory, i))
            .collect::<RhaiResult<Vec<_>>>()?;
        // Nothing to open in a plan: no copies of 100,000 instances.
        if !c.effects.is_dry_run() {
            let insts: Vec<_> = insts.into_iter().cloned().collect();
            c.effects.connect_ahead(c.handle(), &insts);
        }
        Ok(())
    });

    const LOCAL_DOC: &str = "Runs `cmd` with `sh -c` on the machine running rollscript (LB-host commands, builds, notifications). Same result, options and errors as `ssh`.
Example: `local(\"git rev-parse HEAD\").stdout`";
    let c = ctx.clone();
    func("local", &["cmd: Dynamic", "Map"], LOCAL_DOC).register_into_engine(
        engine,
        move |cmd: Dynamic| -> RhaiResult<Map> {
            let cmd = cmd_arg(&cmd)?;
            c.block_on(c.effects.local(&cmd, ExecOptions::default()))
                .map(|o| exec_map(&o))
                .map_err(throw)
        },
    );
    let c = ctx.clone();
    func("local", &["cmd: Dynamic", "options: Map", "Map"], LOCAL_DOC).register_into_engine(
        engine,
        move |cmd: Dynamic, opts: Map| -> RhaiResult<Map> {
            let cmd = cmd_arg(&cmd)?;
            let opts = exec_options(&opts)?;
            c.block_on(c.effects.local(&cmd, opts))
                .map(|o| exec_map(&o))
                .map_err(throw)
        },
    );

    let c = ctx.clone();
    func(
        "notify",
        &["url: String", "message: String", "bool"],
        "Posts `message` as a Slack-compatible webhook (`{\"text\": message}`) to `url`: 5 s timeout, 3 attempts. Returns false (with a warning) if it could not be delivered — a notification never fails a deploy.
Example: `notify(var(\"notify_url\", \"\"), `canary at ${pct}%`);`",
    )
    .register_into_engine(engine, move |url: &str, message: &str| -> bool {
        if url.is_empty() {
            return false;
        }
        c.block_on(c.effects.notify(url, message))
    });
}
