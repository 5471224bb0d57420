//! What a journal says about its run: replayed for `recover`, `runs` and
//! the capacity survey.

use super::{KnownInstance, Record};

/// What a journal says about its run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub run: String,
    pub started: String,
    pub script: String,
    pub inventory: String,
    pub pid: u32,
    pub host: String,
    pub user: String,
    pub args: Vec<String>,
    pub script_sha256: String,
    pub inventory_sha256: String,
    pub identity: Option<String>,
    pub inventory_path: Option<String>,
    pub script_path: Option<String>,
    pub boot_id: String,
    pub proc_start: u64,
    /// The fleet a discovering run found.
    pub instances: Vec<KnownInstance>,
    /// None while unfinished (running, or killed).
    pub outcome: Option<String>,
    /// Instances whose removal from the LB was started and not undone, in order.
    pub out_of_service: Vec<String>,
    /// Of those, the ones on which a command ran after removal (a deploy may
    /// be half done: compensation runs the rollback on them).
    pub touched: Vec<String>,
    /// Of those, the ones registered again whose return the LB had not yet
    /// confirmed (`wait_in_service`): compensation asks the LB first.
    pub registered: Vec<String>,
    pub failed: Vec<String>,
    pub left_out: Vec<String>,
    pub effects: usize,
    /// LB weights were changed (`shift_traffic`, `set_weight`) and neither
    /// reset nor settled by the run's end: a killed run's weights.
    pub weights_changed: bool,
}

/// Replays a journal. An intent without a result counts as done: a deregister
/// that may have happened must be treated as if it did.
pub fn summarise(records: &[Record]) -> Summary {
    use std::collections::{BTreeMap, BTreeSet};
    let mut s = Summary::default();
    let mut intents: BTreeMap<u64, (String, Option<String>)> = BTreeMap::new();
    let mut out: Vec<String> = Vec::new();
    let mut touched: BTreeSet<String> = BTreeSet::new();
    let mut failed: BTreeSet<String> = BTreeSet::new();
    let mut results: BTreeMap<u64, bool> = BTreeMap::new();
    let mut never_started: BTreeSet<u64> = BTreeSet::new();
    let mut maybe_applied: BTreeSet<u64> = BTreeSet::new();
    let mut registered: BTreeSet<String> = BTreeSet::new();
    for r in records {
        if let Record::Result {
            seq,
            ok,
            error_kind,
            unknown_outcome,
            ..
        } = r
        {
            results.insert(*seq, *ok);
            if *unknown_outcome {
                maybe_applied.insert(*seq);
            }
            let not_run = crate::primitives::ErrorKind::ALL
                .iter()
                .any(|k| Some(k.as_str()) == error_kind.as_deref() && k.command_never_started());
            if not_run {
                never_started.insert(*seq);
            }
        }
    }
    for r in records {
        match r {
            Record::RunStart {
                run,
                at,
                script,
                script_sha256,
                inventory,
                inventory_sha256,
                user,
                host,
                pid,
                args,
                identity,
                inventory_path,
                script_path,
                boot_id,
                proc_start,
                instances,
            } => {
                s.instances = instances.clone();
                s.run = run.clone();
                s.started = at.clone();
                s.script = script.clone();
                s.script_sha256 = script_sha256.clone();
                s.inventory = inventory.clone();
                s.inventory_sha256 = inventory_sha256.clone();
                s.user = user.clone();
                s.pid = *pid;
                s.host = host.clone();
                s.args = args.clone();
                s.identity = identity.clone();
                s.inventory_path = inventory_path.clone();
                s.script_path = script_path.clone();
                s.boot_id = boot_id.clone();
                s.proc_start = *proc_start;
            }
            Record::Intent {
                seq, op, instance, ..
            } => {
                s.effects += 1;
                intents.insert(*seq, (op.clone(), instance.clone()));
                match op.as_str() {
                    "shift_traffic" => s.weights_changed = true,
                    "reset_weights" if results.get(seq) == Some(&true) => s.weights_changed = false,
                    _ => {}
                }
                let Some(inst) = instance else { continue };
                let ok = results.get(seq).copied();
                match op.as_str() {
                    // A deregister that may have happened counts as done.
                    "deregister"
                        if (ok != Some(false) || maybe_applied.contains(seq))
                            && !out.contains(inst) =>
                    {
                        out.push(inst.clone());
                        registered.remove(inst);
                    }
                    "register" if ok == Some(true) && out.contains(inst) => {
                        registered.insert(inst.clone());
                    }
                    // Back only once the LB confirmed it in service.
                    "wait_in_service" if ok == Some(true) && registered.contains(inst) => {
                        out.retain(|i| i != inst);
                        touched.remove(inst);
                        registered.remove(inst);
                    }
                    "ssh" if out.contains(inst) && !never_started.contains(seq) => {
                        touched.insert(inst.clone());
                    }
                    "set_weight" => s.weights_changed = true,
                    _ => {}
                }
                if ok == Some(false) {
                    failed.insert(inst.clone());
                }
            }
            Record::Compensation {
                instance,
                restored,
                rolled_back,
                ..
            } => {
                if *restored {
                    out.retain(|i| i != instance);
                    registered.remove(instance);
                }
                if *restored || *rolled_back {
                    touched.remove(instance);
                }
            }
            Record::RunEnd {
                outcome, left_out, ..
            } => {
                s.outcome = Some(outcome.clone());
                s.left_out = left_out.clone();
                // A run that ended reset its weights on failure, or kept
                // them on purpose.
                s.weights_changed = false;
            }
            Record::Result { .. }
            | Record::Answer { .. }
            | Record::Control { .. }
            | Record::Drained { .. } => {}
        }
    }
    s.touched = out
        .iter()
        .filter(|i| touched.contains(*i))
        .cloned()
        .collect();
    s.registered = out
        .iter()
        .filter(|i| registered.contains(*i))
        .cloned()
        .collect();
    s.out_of_service = out;
    s.failed = failed.into_iter().collect();
    s
}
