fn main() {
    println!("gntsim: work in progress");
}
