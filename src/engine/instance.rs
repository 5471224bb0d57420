//! Instances as scripts see them: `Instance`, a handle onto the inventory's
//! entry with read-only properties (`inst.name`, `inst.host`, `inst.port`,
//! `inst.id`, `inst.pool`, `inst.weight`, `inst.health_url`; also
//! `inst["name"]`).
//!
//! Not a map: every step passes its instance along (`step.call(inst)`,
//! `deregister(inst)`, …) and Rhai copies a map on each pass — a plan of
//! 100,000 instances made tens of millions of those copies. A handle is an
//! index and the name: copying it is a reference count, a primitive finds its
//! instance without a lookup, and it prints as the map it replaced.

use rhai::{Dynamic, Engine, ImmutableString, Map, INT};

use super::convert::{invalid, RhaiResult};
use crate::config::{Instance, Inventory};

/// The script's value for `inventory.instances[index]`.
#[derive(Debug, Clone)]
pub struct InstanceRef {
    index: usize,
    name: ImmutableString,
}

impl InstanceRef {
    pub fn new(inv: &Inventory, index: usize) -> Self {
        Self {
            index,
            name: inv.instances[index].name.as_str().into(),
        }
    }

    /// The instance for `inst`, by name (a handle of another inventory,
    /// e.g. kept from a test's earlier run, is looked up again).
    pub fn of(inv: &Inventory, inst: &Instance) -> Self {
        Self {
            index: inv.position(&inst.name).unwrap_or(usize::MAX),
            name: inst.name.as_str().into(),
        }
    }

    fn get<'a>(&self, inv: &'a Inventory) -> Option<&'a Instance> {
        match inv.instances.get(self.index) {
            Some(i) if i.name == self.name.as_str() => Some(i),
            _ => inv.instance(&self.name),
        }
    }
}

/// An instance's properties, in the order its map prints them.
const FIELDS: [&str; 7] = ["health_url", "host", "id", "name", "pool", "port", "weight"];

/// The property `key` (one of [`FIELDS`]) of `i`.
fn value(inv: &Inventory, i: &Instance, key: &str) -> Dynamic {
    let opt = |s: Option<&str>| s.map_or(Dynamic::UNIT, |s| s.to_string().into());
    match key {
        "name" => i.name.clone().into(),
        "host" => i.host.clone().into(),
        "port" => (inv.traffic_port(i) as INT).into(),
        "id" => opt(i.id.as_deref()),
        "pool" => opt(i.pool.as_deref()),
        "weight" => i.weight.map_or(Dynamic::UNIT, |w| Dynamic::from(w as INT)),
        "health_url" => inv.health_url(i).into(),
        _ => Dynamic::UNIT,
    }
}

/// The instance as the map scripts used to get (printing, `to_map`).
pub fn to_map(inv: &Inventory, i: &Instance) -> Map {
    FIELDS
        .iter()
        .map(|&k| (k.into(), value(inv, i, k)))
        .collect()
}

/// An instance argument: an `Instance` from `instances()`, a map with its
/// `name`, or a name. Only instances of the inventory are accepted, so a
/// script cannot aim at an arbitrary host.
pub fn arg<'a>(inv: &'a Inventory, v: &Dynamic) -> RhaiResult<&'a Instance> {
    let name = if let Some(h) = v.read_lock::<InstanceRef>() {
        if let Some(i) = h.get(inv) {
            return Ok(i);
        }
        h.name.to_string()
    } else if let Some(m) = v.read_lock::<Map>() {
        match m.get("name") {
            Some(n) => n.to_string(),
            None => {
                return Err(invalid(
                    "expected an instance (from instances(), or a map with its `name`)",
                ))
            }
        }
    } else if v.is_string() {
        v.to_string()
    } else {
        return Err(invalid(format!(
            "expected an instance (from instances() or a name), got {}",
            v.type_name()
        )));
    };
    inv.instance(&name).ok_or_else(|| unknown(inv, &name))
}

/// The `Instance` type: its properties, indexer, printing and equality.
pub fn register(engine: &mut Engine, inv: &std::sync::Arc<Inventory>) {
    engine.register_type_with_name::<InstanceRef>("Instance");
    // `name` from the handle itself: the one property read on every step.
    engine.register_get("name", |h: &mut InstanceRef| h.name.clone());
    for key in FIELDS.into_iter().filter(|&k| k != "name") {
        let i = inv.clone();
        engine.register_get(key, move |h: &mut InstanceRef| {
            Ok::<_, Box<rhai::EvalAltResult>>(value(&i, resolved(&i, h)?, key))
        });
    }
    let i = inv.clone();
    engine.register_indexer_get(move |h: &mut InstanceRef, key: &str| -> RhaiResult<Dynamic> {
        if !FIELDS.contains(&key) {
            return Err(invalid(format!(
                "an instance has no property {key:?} (it has name, host, port, id, pool, weight, health_url)"
            )));
        }
        Ok(value(&i, resolved(&i, h)?, key))
    });
    let i = inv.clone();
    engine.register_fn("to_map", move |h: &mut InstanceRef| -> RhaiResult<Map> {
        Ok(to_map(&i, resolved(&i, h)?))
    });
    for name in ["to_string", "to_debug"] {
        let i = inv.clone();
        engine.register_fn(name, move |h: &mut InstanceRef| -> String {
            match h.get(&i) {
                Some(inst) => format!("{:?}", Dynamic::from_map(to_map(&i, inst))),
                None => format!("instance {:?}", h.name.as_str()),
            }
        });
    }
    engine.register_fn("==", |a: &mut InstanceRef, b: InstanceRef| a.name == b.name);
    engine.register_fn("!=", |a: &mut InstanceRef, b: InstanceRef| a.name != b.name);
}

fn resolved<'a>(inv: &'a Inventory, h: &InstanceRef) -> RhaiResult<&'a Instance> {
    h.get(inv).ok_or_else(|| unknown(inv, &h.name))
}

fn unknown(inv: &Inventory, name: &str) -> Box<rhai::EvalAltResult> {
    invalid(format!(
        "no instance named {name:?} in {}",
        inv.path.display()
    ))
}
