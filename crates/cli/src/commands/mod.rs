//! One module per command group; each turns parsed arguments into calls and
//! output.

mod serve;
mod tenants;

use crate::{
    args::{Cli, Command, PlansCommand},
    exit::CliError,
};

pub async fn run(cli: Cli) -> Result<(), CliError> {
    match &cli.command {
        Command::Serve(args) => serve::run(args, cli.global.data_dir.as_deref()).await,
        Command::Tenants(command) => tenants::run(command, &cli.global).await,
        Command::Plans(PlansCommand::List) => tenants::list_plans(&cli.global).await,
    }
}
