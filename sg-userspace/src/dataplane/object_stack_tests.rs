//! The programs' deepest call chains must fit the 512 bytes of stack that kernels before
//! 6.7 allow once they round every frame up to 32 bytes: the 6.1 and 5.10 verifiers
//! rejected `sg_ingress` at 544 when a `memset` call became a fourth frame under
//! `stateful` and `cache_session`. Checked on the object itself, so a change that deepens
//! a chain fails here, on the host, before the VM suite boots an old kernel.
//!
//! A frame's depth is the lowest stack offset its instructions address through `r10`
//! (what the verifier reports per subprogram, give or take a pointer passed to a helper);
//! calls are BPF-to-BPF calls, pc-relative or through a relocation.

use std::collections::HashMap;

use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget, SectionIndex, SymbolKind};

use super::OBJECT;

/// What kernels before 6.7 allow for a whole call chain.
const STACK_LIMIT: u64 = 512;

struct Function {
    name: String,
    depth: u64,
    calls: Vec<(SectionIndex, u64)>,
}

/// Every function of the object, by (section, byte offset).
fn functions() -> HashMap<(SectionIndex, u64), Function> {
    let file = object::File::parse(OBJECT).expect("the embedded object parses");
    let mut out = HashMap::new();
    for sym in file.symbols() {
        let (SymbolKind::Text, Some(index)) = (sym.kind(), sym.section_index()) else { continue };
        if sym.size() == 0 {
            continue;
        }
        let section = file.section_by_index(index).expect("the symbol's section");
        let data = section.data().expect("section data");
        let relocations: HashMap<u64, RelocationTarget> =
            section.relocations().map(|(offset, r)| (offset, r.target())).collect();
        let (start, end) = (sym.address(), sym.address() + sym.size());
        let mut f = Function { name: sym.name().unwrap_or("?").to_string(), depth: 0, calls: Vec::new() };
        let mut at = start;
        while at + 8 <= end {
            let insn = &data[at as usize..at as usize + 8];
            let (code, dst, src) = (insn[0], insn[1] & 0xf, insn[1] >> 4);
            let off = i16::from_le_bytes([insn[2], insn[3]]);
            let imm = i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
            let class = code & 7;
            let through_r10 = match class {
                1 => src == 10,     // LDX
                2 | 3 => dst == 10, // ST, STX
                _ => false,
            };
            if through_r10 && off < 0 {
                f.depth = f.depth.max(u64::from(off.unsigned_abs()));
            }
            if code == 0x85 && src == 1 {
                let callee = match relocations.get(&at) {
                    Some(RelocationTarget::Symbol(target)) => {
                        let target = file.symbol_by_index(*target).expect("relocation symbol");
                        let section = target.section_index().expect("a call into a section");
                        (section, target.address().wrapping_add(((i64::from(imm) + 1) * 8) as u64))
                    }
                    _ => (index, at.wrapping_add(((i64::from(imm) + 1) * 8) as u64)),
                };
                f.calls.push(callee);
            }
            // A 64-bit immediate load takes two instruction slots.
            at += if code == 0x18 { 16 } else { 8 };
        }
        out.insert((index, start), f);
    }
    out
}

/// The deepest chain from `key` with every frame rounded up to 32 bytes: its bytes and
/// its functions.
fn deepest(
    functions: &HashMap<(SectionIndex, u64), Function>,
    key: (SectionIndex, u64),
    path: &mut Vec<(SectionIndex, u64)>,
) -> (u64, Vec<String>) {
    let f = functions.get(&key).unwrap_or_else(|| panic!("a call to {key:?}, which is no function"));
    let frame = f.depth.max(1).div_ceil(32) * 32;
    path.push(key);
    let mut worst = (0, Vec::new());
    for callee in &f.calls {
        if path.contains(callee) {
            continue;
        }
        let below = deepest(functions, *callee, path);
        if below.0 > worst.0 {
            worst = below;
        }
    }
    path.pop();
    let mut chain = vec![format!("{} ({} -> {frame})", f.name, f.depth)];
    chain.extend(worst.1);
    (frame + worst.0, chain)
}

#[test]
fn every_call_chain_fits_the_stack_of_kernels_before_6_7() {
    if OBJECT.is_empty() {
        assert!(std::env::var_os("CI").is_none(), "under CI the eBPF object must be built");
        eprintln!("skipped: the eBPF object was not built");
        return;
    }
    let functions = functions();
    for program in ["sg_ingress", "sg_egress"] {
        let (key, _) = functions.iter().find(|(_, f)| f.name == program).unwrap_or_else(|| panic!("no {program}"));
        let (bytes, chain) = deepest(&functions, *key, &mut Vec::new());
        // The parse found the pipeline's frames and calls, or the check means nothing.
        assert!(chain.len() >= 3 && bytes >= 256, "{program}: implausibly shallow: {chain:?}");
        assert!(bytes <= STACK_LIMIT, "{program}: the deepest chain takes {bytes} bytes: {}", chain.join(" > "));
    }
}
