//! Choosing the kernels' instruction-set level for the process (what `--isa` does). Its own
//! test binary: the choice is process-wide and would leak into other tests.

use kiln_kernels::dot::Isa;
use kiln_kernels::interleave::{self, Layout};
use kiln_kernels::DType;

#[test]
fn a_chosen_level_applies_to_the_process_and_unavailable_ones_are_refused() {
    let detected = Isa::detected();
    assert_eq!(Isa::best(), detected);
    assert_eq!("SCALAR".parse::<Isa>(), Ok(Isa::Scalar));
    assert!("sse9".parse::<Isa>().unwrap_err().contains("scalar"));

    Isa::use_in_process(Isa::Scalar).unwrap();
    assert_eq!(Isa::best(), Isa::Scalar);
    // The scalar kernels want no interleaved layout.
    assert_eq!(interleave::preferred(DType::Q4_K, &[8, 256]), Layout::Plain);

    let missing = [Isa::Avx2, Isa::Neon, Isa::NeonDot]
        .into_iter()
        .find(|i| !i.is_available())
        .expect("no CPU has both x86 and Arm levels");
    let e = Isa::use_in_process(missing).unwrap_err().to_string();
    assert!(e.contains(missing.name()) && e.contains("scalar"), "{e}");
    assert_eq!(Isa::best(), Isa::Scalar, "a refused level changes nothing");

    Isa::use_in_process(detected).unwrap();
    assert_eq!(Isa::best(), detected);
}

/// AVX-512 (F, BW, VL and VNNI) is chosen by itself where the CPU has it, and the AVX2 kernels
/// can still be forced there for comparison (`--isa avx2`).
#[test]
fn avx512_is_auto_selected_where_the_cpu_has_it() {
    assert_eq!("AVX512".parse::<Isa>(), Ok(Isa::Avx512));
    if !Isa::Avx512.is_available() {
        println!(
            "avx512_is_auto_selected: this CPU has no AVX-512 F/BW/VL/VNNI; not checked ({})",
            kiln_kernels::cpu_features()
        );
        return;
    }
    assert_eq!(Isa::detected(), Isa::Avx512);
    assert!(Isa::Avx2.is_available());
    assert_eq!(Isa::available().last(), Some(&Isa::Avx512));
}
