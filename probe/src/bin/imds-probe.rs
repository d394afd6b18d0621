//! `imds-probe`: the conformance probe that runs inside kind test pods. Everything is in
//! [`imds_probe`]; this file only hands it the command line and the exit code.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(imds_probe::main_with(&args));
}
