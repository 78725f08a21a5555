//! One module per command group; each turns parsed arguments into calls and
//! output.

mod serve;
mod tenants;

use crate::{
    args::{Cli, Command, PlansCommand},
    client::ApiClient,
    exit::CliError,
    output,
};

pub async fn run(cli: Cli) -> Result<(), CliError> {
    match &cli.command {
        Command::Serve(args) => serve::run(args, cli.global.data_dir.as_deref()).await,
        Command::Tenants(command) => tenants::run(command, &cli.global).await,
        Command::Plans(PlansCommand::List) => {
            let client = ApiClient::discover(&cli.global)?;
            output::plans(cli.global.output, &client.plans().await?.plans)
        }
    }
}
