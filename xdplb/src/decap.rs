//! `xdplb decap`: attaches the IP-in-IP decapsulation program on a backend host, for
//! `forwarding = "dsr-ipip"`. The link and the counters are pinned under
//! `<bpffs>/xdplb-decap/<interface>/`, so the program stays attached after the command exits;
//! `--remove` takes it off again.

use std::path::PathBuf;

use aya::{
    EbpfLoader,
    maps::{MapData, PerCpuArray},
    programs::{Xdp, links::FdLink},
};

use crate::{
    config::XdpModeSetting,
    dataplane::{DECAP_OBJECT, DataplaneError, attach::attach_xdp, pin},
};

const PROGRAM: &str = "xdplb_decap";
const MAP: &str = "DECAP_STATS_V1";

/// The pin directory of `interface`.
pub fn pin_dir(interface: &str) -> PathBuf {
    pin::bpffs().join("xdplb-decap").join(interface)
}

fn pin_error(path: &std::path::Path, e: &dyn std::error::Error) -> DataplaneError {
    DataplaneError::Pin {
        path: path.to_path_buf(),
        reason: crate::dataplane::attach::error_chain(e),
    }
}

/// Loads and attaches the decapsulation program to `interface` and pins it. Returns the XDP
/// mode used. Refuses an interface that has it already.
pub fn attach(interface: &str, mode: XdpModeSetting) -> Result<&'static str, DataplaneError> {
    if !crate::dataplane::has_bpf_privileges() {
        return Err(DataplaneError::NotPermitted(
            "the process lacks CAP_NET_ADMIN and CAP_BPF/CAP_SYS_ADMIN".into(),
        ));
    }
    pin::ensure_bpffs(&pin::bpffs())?;
    let dir = pin_dir(interface);
    let link_path = dir.join("link");
    if link_path.exists() {
        return Err(DataplaneError::Pin {
            path: link_path,
            reason: "decap is already attached here; remove it first with --remove".into(),
        });
    }
    std::fs::create_dir_all(&dir).map_err(|e| pin_error(&dir, &e))?;
    let map_path = dir.join(MAP);
    let result = (|| {
        let mut ebpf = EbpfLoader::new()
            .map_pin_path(MAP, map_path.as_path())
            .load(DECAP_OBJECT)
            .map_err(|e| DataplaneError::Load(Box::new(e)))?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .ok_or(DataplaneError::MissingProgram(PROGRAM))?
            .try_into()
            .map_err(|e| DataplaneError::program(PROGRAM, e))?;
        prog.load()
            .map_err(|e| DataplaneError::program(PROGRAM, e))?;
        let (id, used) = attach_xdp(prog, interface, mode)?;
        let link = prog
            .take_link(id)
            .map_err(|e| DataplaneError::program(PROGRAM, e))?;
        let link = FdLink::try_from(link).map_err(|e| pin_error(&link_path, &e))?;
        link.pin(&link_path)
            .map_err(|e| pin_error(&link_path, &e))?;
        Ok(used)
    })();
    if result.is_err() {
        let _ = remove(interface);
    }
    result
}

/// Removes the pins of `interface` (which detaches the program). Returns whether anything was
/// there.
pub fn remove(interface: &str) -> Result<bool, DataplaneError> {
    let dir = pin_dir(interface);
    if !dir.exists() {
        return Ok(false);
    }
    for name in ["link", MAP] {
        let p = dir.join(name);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(pin_error(&p, &e)),
        }
    }
    std::fs::remove_dir(&dir).map_err(|e| pin_error(&dir, &e))?;
    if let Some(parent) = dir.parent() {
        let _ = std::fs::remove_dir(parent);
    }
    Ok(true)
}

/// The counters of the program on `interface`: (decapsulated, left alone, failed).
pub fn stats(interface: &str) -> Result<(u64, u64, u64), DataplaneError> {
    let path = pin_dir(interface).join(MAP);
    let data = MapData::from_pin(&path).map_err(|e| pin_error(&path, &e))?;
    let map = aya::maps::Map::PerCpuArray(data);
    let arr: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(map).map_err(|e| DataplaneError::map(MAP, e))?;
    let sum = |i: u32| -> Result<u64, DataplaneError> {
        Ok(arr
            .get(&i, 0)
            .map_err(|e| DataplaneError::map(MAP, e))?
            .iter()
            .sum())
    };
    Ok((sum(0)?, sum(1)?, sum(2)?))
}
