import BallonetHost

HostCommand.main()
