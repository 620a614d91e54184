fn main() {
    print!("{}", dbt_cloud_operator::crd::yaml());
}
